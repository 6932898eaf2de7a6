"""promotion.judge: promoted only when the holdout loss fell and the probe loss rose by at most ε."""

from __future__ import annotations

import math

import pytest

from memwarden.learning.promotion import judge


def ev(before=2.0, after=1.5, p_before=None, p_after=None):
    return {"holdout_loss_before": before, "holdout_loss_after": after, "probe_loss_before": p_before,
            "probe_loss_after": p_after}


def test_learning_without_earlier_memories_is_promoted():
    v = judge(ev(), 0.05)
    assert v.promote and v.improvement == pytest.approx(0.25) and v.forgetting is None
    assert "no earlier memories to probe" in v.reason


def test_forgetting_within_epsilon_is_promoted_and_beyond_it_is_not():
    within = judge(ev(p_before=1.0, p_after=1.04), 0.05)
    assert within.promote and within.forgetting == pytest.approx(0.04) and "+4.0%" in within.reason
    beyond = judge(ev(p_before=1.0, p_after=1.06), 0.05)
    assert not beyond.promote and beyond.forgetting == pytest.approx(0.06)
    assert beyond.reason.startswith("forgot too much: loss on earlier memories rose 6.0%")


def test_probe_loss_falling_is_no_forgetting():
    v = judge(ev(p_before=1.0, p_after=0.9), 0.0)
    assert v.promote and v.forgetting == pytest.approx(-0.1)


@pytest.mark.parametrize("after", [2.0, 2.5])
def test_a_holdout_loss_that_did_not_fall_is_not_promoted(after):
    v = judge(ev(after=after), 10.0)
    assert not v.promote and "did not improve" in v.reason and v.improvement <= 0


@pytest.mark.parametrize("before, after", [(None, 1.0), (2.0, None), (math.nan, 1.0), (2.0, math.inf), (0.0, 0.0),
                                           ("2", 1.0)])
def test_no_usable_holdout_evaluation_is_not_promoted(before, after):
    v = judge(ev(before, after), 10.0)
    assert not v.promote and v.reason.startswith("no usable holdout evaluation")
    assert v.improvement is None and v.forgetting is None


def test_an_unusable_probe_is_ignored_not_fatal():
    v = judge(ev(p_before=0.0, p_after=5.0), 0.0)
    assert v.promote and v.forgetting is None
