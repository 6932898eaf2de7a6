"""promotion.judge: promoted only when the run recalls its memories, the earlier rounds' recall held within ε and
the general-probe loss rose by at most its ε; otherwise rejected with the numbers."""

from __future__ import annotations

import math

import pytest

from memwarden.config import parse_config
from memwarden.learning.promotion import (
    DPO_FORGOT,
    FORGOT,
    GENERAL_DRIFT,
    LOW_RECALL,
    NO_PREFERENCE_GAIN,
    PROMOTED,
    Gate,
    judge,
)

GATE = Gate(min_recall=0.9, forgetting_epsilon=0.05, general_epsilon=0.02)


def ev(recalled=38, memories=40, before=None, after=None, probe_memories=40, g_before=None, g_after=None):
    out = {"recall_recalled": recalled, "recall_memories": memories, "holdout_loss_before": 2.0,
           "holdout_loss_after": 2.5, "general_loss_before": g_before, "general_loss_after": g_after}
    if before is not None:
        out.update(probe_recall_before_recalled=before, probe_recall_before_memories=probe_memories,
                   probe_recall_after_recalled=after, probe_recall_after_memories=probe_memories)
    return out


def test_a_first_round_that_recalls_is_promoted_whatever_its_holdout_loss():
    v = judge(ev(), GATE)
    assert (v.promote, v.code) == (True, PROMOTED)
    assert v.recall == pytest.approx(0.95) and v.forgetting is None and v.general_rise is None
    assert v.reason == "recalled 38/40 (95%); no earlier memories to probe; no general probe"


@pytest.mark.parametrize("recalled, promote", [(36, True), (35, False), (0, False)])
def test_recall_at_the_target_is_enough_and_below_it_is_rejected(recalled, promote):
    v = judge(ev(recalled=recalled), GATE)
    assert v.promote is promote
    if not promote:
        assert v.code == LOW_RECALL
        assert v.reason == (f"recalled {recalled}/40 ({recalled / 40:.0%}) of this run's memories, below "
                            "learning.min_recall 90%")


def test_recall_not_measured_is_rejected_unless_the_target_is_zero():
    v = judge(ev(memories=0, recalled=0), GATE)
    assert (v.promote, v.code, v.recall) == (False, LOW_RECALL, None)
    assert v.reason.startswith("recall not measured")
    off = judge(ev(memories=0, recalled=0), Gate(min_recall=0.0))
    assert off.promote and off.reason.startswith("recalled - (not required)")


def test_earlier_rounds_may_drop_by_epsilon_and_no_more():
    within = judge(ev(before=38, after=36), GATE)
    assert within.promote and within.forgetting == pytest.approx(0.05)
    assert "earlier rounds 38/40 → 36/40" in within.reason
    beyond = judge(ev(before=38, after=35), GATE)
    assert (beyond.promote, beyond.code) == (False, FORGOT) and beyond.forgetting == pytest.approx(0.075)
    assert beyond.reason == ("forgot too much: earlier rounds recalled 38/40 → 35/40 (−7.5%), more than "
                             "learning.forgetting_epsilon 5.0%")


def test_earlier_rounds_recalled_better_is_no_forgetting():
    v = judge(ev(before=30, after=34), Gate(forgetting_epsilon=0.0))
    assert v.promote and v.forgetting == pytest.approx(-0.1)


def test_low_recall_is_the_reason_even_when_it_also_forgot():
    v = judge(ev(recalled=10, before=40, after=0), GATE)
    assert v.code == LOW_RECALL and v.forgetting == pytest.approx(1.0)


def test_general_probe_loss_may_rise_by_its_epsilon_and_no_more():
    within = judge(ev(g_before=1.0, g_after=1.02), GATE)
    assert within.promote and within.general_rise == pytest.approx(0.02) and "general-probe loss +2.0%" in \
        within.reason
    beyond = judge(ev(g_before=1.0, g_after=1.03), GATE)
    assert (beyond.promote, beyond.code) == (False, GENERAL_DRIFT)
    assert beyond.reason == ("general-probe loss rose 3.0% (1.0000 → 1.0300), more than learning.general_epsilon "
                             "2.0%")


@pytest.mark.parametrize("g_before, g_after", [(None, 1.0), (1.0, None), (math.nan, 1.0), (1.0, math.inf),
                                               (0.0, 5.0), ("1", 5.0), (True, 5.0)])
def test_an_unusable_general_probe_is_no_probe_not_a_rejection(g_before, g_after):
    v = judge(ev(g_before=g_before, g_after=g_after), Gate(general_epsilon=0.0))
    assert v.promote and v.general_rise is None and "no general probe" in v.reason


def test_the_gate_comes_from_the_learning_section_and_logs_its_settings():
    cfg = parse_config({"learning": {"min_recall": 0.8, "forgetting_epsilon": 0.1, "general_epsilon": 0.03}},
                       env={}, uid=1000).learning
    gate = Gate.of(cfg)
    assert gate == Gate(0.8, 0.1, 0.03)
    fields = judge(ev(recalled=20), gate).log_fields()
    assert fields == {"decision": "learning.promote", "promote": False, "code": LOW_RECALL, "recall": 0.5,
                      "forgetting": None, "general_rise": None, "preference_accuracy": None, "gate_min_recall": 0.8,
                      "gate_forgetting_epsilon": 0.1, "gate_general_epsilon": 0.03}


def test_the_defaults_are_the_documented_ones():
    cfg = parse_config({}, env={}, uid=1000).learning
    assert (cfg.min_recall, cfg.forgetting_epsilon) == (0.9, 0.1)
    assert Gate.of(cfg) == Gate()


def dpo(before: float, after: float, recalled_before: int = 38, heldout: int = 10, **kw) -> dict:
    """A run with a DPO stage: its held-out preference accuracy, and its recall before the stage (after: ev's)."""
    return {**ev(**kw), "dpo_steps": 40, "preference_heldout": heldout, "preference_accuracy_before": before,
            "preference_accuracy_after": after, "recall_before_dpo_recalled": recalled_before,
            "recall_before_dpo_memories": 40}


def test_a_dpo_stage_that_raised_preference_accuracy_and_kept_recall_is_promoted():
    v = judge(dpo(0.5, 0.8, recalled_before=39, recalled=37), GATE)  # 39 → 37 of 40: a drop of exactly ε
    assert (v.promote, v.code, v.preference) == (True, PROMOTED, (0.5, 0.8))
    assert v.reason.endswith("; held-out preferences 50% → 80%")
    assert v.log_fields()["preference_accuracy"] == [0.5, 0.8]


@pytest.mark.parametrize("after", [0.5, 0.4])
def test_a_dpo_stage_that_did_not_raise_preference_accuracy_is_rejected(after):
    v = judge(dpo(0.5, after), GATE)
    assert (v.promote, v.code) == (False, NO_PREFERENCE_GAIN)
    assert v.reason == f"the DPO stage did not raise preference accuracy on 10 held-out pairs: 50% → {after:.0%}"


def test_held_out_preferences_all_preferred_before_and_after_are_no_reason_to_reject():
    assert judge(dpo(1.0, 1.0), GATE).promote
    assert judge(dpo(1.0, 0.9), GATE).code == NO_PREFERENCE_GAIN


def test_a_dpo_stage_that_cost_recall_beyond_epsilon_is_rejected():
    v = judge(dpo(0.5, 0.9, recalled_before=40, recalled=37), GATE)
    assert (v.promote, v.code) == (False, DPO_FORGOT)
    assert v.reason == ("the DPO stage cost recall: 40/40 → 37/40 (−7.5%), more than learning.forgetting_epsilon "
                        "5.0%")


def test_the_supervised_gate_comes_first_and_a_run_without_a_dpo_stage_is_not_judged_on_preferences():
    assert judge(dpo(0.5, 0.9, recalled=20), GATE).code == LOW_RECALL
    v = judge({**dpo(0.5, 0.4), "dpo_steps": 0}, GATE)
    assert (v.promote, v.preference) == (True, None) and "preferences" not in v.reason
