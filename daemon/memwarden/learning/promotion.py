"""Promote a trained version, or keep the current one and say why (pure).

The gate (`Gate`, from `learning.min_recall`, `learning.forgetting_epsilon`, `learning.general_epsilon`) asks of
the trainer's report (eval_report.EvalReport.judged) three things (five of a run with a DPO stage), in this
order; the first that fails is the reason the run is rejected, with its numbers:

1. `low_recall`: the run gives back at least `min_recall` of its own memories (greedy recall, recall_score.py).
   Recall that was not measured fails too, unless `min_recall` is 0 (the check is off).
2. `forgot`: recall on the probe of earlier rounds' memories dropped by at most `forgetting_epsilon` (a share of
   the probe: 0.05 is 2 of 40). No earlier round, or a probe not measured: nothing to forget.
3. `general_drift`: the loss on the base's general-text probe rose by at most `general_epsilon`, relative
   (0.02 = 2 % higher). A base without a general probe passes, and the reason says so.

A run with a DPO stage (training/dpo.py) must also have
4. `no_preference_gain`: raised its preference accuracy on the held-out pairs (the stage never trains them), or
   kept it at 100 %;
5. `dpo_forgot`: kept recall on this run's memories, after the stage, within `forgetting_epsilon` of what the
   supervised stage left.

The holdout loss (on held-out wordings, or on memories kept out of training) is reported, never gated. Memories are
marked consolidated in the same transaction that records the promotion — never before, never twice
(publisher.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

PROMOTED = "promoted"
LOW_RECALL = "low_recall"
FORGOT = "forgot"
GENERAL_DRIFT = "general_drift"
NO_PREFERENCE_GAIN = "no_preference_gain"
DPO_FORGOT = "dpo_forgot"
# Shares and ratios are compared with this slack: 38/40 → 36/40 is a drop of exactly ε = 0.05 and must pass,
# though 0.95 - 0.9 is 0.05000000000000004 in floating point.
SLACK = 1e-9


class GateConfig(Protocol):
    min_recall: float
    forgetting_epsilon: float
    general_epsilon: float


@dataclass(frozen=True)
class Gate:
    min_recall: float = 0.9
    forgetting_epsilon: float = 0.1
    general_epsilon: float = 0.25

    @staticmethod
    def of(cfg: GateConfig) -> Gate:
        return Gate(cfg.min_recall, cfg.forgetting_epsilon, cfg.general_epsilon)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    code: str  # promoted | low_recall | forgot | general_drift | no_preference_gain | dpo_forgot
    reason: str  # the sentence shown in train history and the journal, with the numbers
    recall: float | None  # share of this run's memories recalled (None: not measured)
    forgetting: float | None  # drop of earlier rounds' recall (0.05 = 5 points lower; None: no probe)
    general_rise: float | None  # relative rise of the general-probe loss (0.02 = 2 % higher; None: no probe)
    gate: Gate
    preference: tuple[float, float] | None = None  # held-out preference accuracy before, after the DPO stage

    def log_fields(self) -> dict[str, Any]:
        return {"decision": "learning.promote", "promote": self.promote, "code": self.code, "recall": self.recall,
                "forgetting": self.forgetting, "general_rise": self.general_rise,
                "preference_accuracy": list(self.preference) if self.preference else None,
                **{f"gate_{k}": v for k, v in asdict(self.gate).items()}}


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _share(ev: Mapping[str, Any], prefix: str) -> tuple[float | None, str]:
    """(share recalled, 'n/m'), or (None, '-') where the set was not measured."""
    memories, recalled = ev.get(f"{prefix}_memories"), ev.get(f"{prefix}_recalled")
    if not (isinstance(memories, int) and memories > 0 and isinstance(recalled, int)):
        return None, "-"
    return recalled / memories, f"{recalled}/{memories}"


def _preference(ev: Mapping[str, Any]) -> tuple[float, float] | None:
    """Held-out preference accuracy before and after the run's DPO stage; None when it had none."""
    before, after = ev.get("preference_accuracy_before"), ev.get("preference_accuracy_after")
    if not ev.get("dpo_steps") or not (_finite(before) and _finite(after)):
        return None
    return float(before), float(after)


def judge(ev: Mapping[str, Any], gate: Gate) -> Verdict:
    recall, recall_text = _share(ev, "recall")
    p_before, before_text = _share(ev, "probe_recall_before")
    p_after, after_text = _share(ev, "probe_recall_after")
    forgetting = p_before - p_after if p_before is not None and p_after is not None else None
    g_before, g_after = ev.get("general_loss_before"), ev.get("general_loss_after")
    general = (g_after - g_before) / g_before if _finite(g_before) and _finite(g_after) and g_before > 0 else None

    pref = _preference(ev)

    def verdict(promote: bool, code: str, reason: str) -> Verdict:
        return Verdict(promote, code, reason, recall, forgetting, general, gate, pref)

    if gate.min_recall > 0 and recall is None:
        return verdict(False, LOW_RECALL, f"recall not measured (no recall file, or learning.recall_sample 0), "
                                          f"and learning.min_recall is {gate.min_recall:g}")
    if recall is not None and recall < gate.min_recall - SLACK:
        return verdict(False, LOW_RECALL, f"recalled {recall_text} ({recall:.0%}) of this run's memories, below "
                                          f"learning.min_recall {gate.min_recall:.0%}")
    if forgetting is not None and forgetting > gate.forgetting_epsilon + SLACK:
        return verdict(False, FORGOT, f"forgot too much: earlier rounds recalled {before_text} → {after_text} "
                                      f"(−{forgetting:.1%}), more than learning.forgetting_epsilon "
                                      f"{gate.forgetting_epsilon:.1%}")
    if general is not None and general > gate.general_epsilon + SLACK:
        return verdict(False, GENERAL_DRIFT, f"general-probe loss rose {general:.1%} ({g_before:.4f} → "
                                             f"{g_after:.4f}), more than learning.general_epsilon "
                                             f"{gate.general_epsilon:.1%}")
    if pref is not None:
        (p_before, p_after), held = pref, ev.get("preference_heldout")
        if p_after <= p_before + SLACK and p_after < 1 - SLACK:  # all held-out pairs preferred: nothing to raise
            return verdict(False, NO_PREFERENCE_GAIN, f"the DPO stage did not raise preference accuracy on {held} "
                                                      f"held-out pairs: {p_before:.0%} → {p_after:.0%}")
        r_before, before_text = _share(ev, "recall_before_dpo")
        if r_before is not None and recall is not None and r_before - recall > gate.forgetting_epsilon + SLACK:
            return verdict(False, DPO_FORGOT, f"the DPO stage cost recall: {before_text} → {recall_text} "
                                              f"(−{r_before - recall:.1%}), more than learning.forgetting_epsilon "
                                              f"{gate.forgetting_epsilon:.1%}")
    parts = [f"recalled {recall_text}" + (f" ({recall:.0%})" if recall is not None else " (not required)"),
             "no earlier memories to probe" if forgetting is None else
             f"earlier rounds {before_text} → {after_text}",
             "no general probe" if general is None else f"general-probe loss {general:+.1%}"]
    if pref is not None:
        parts.append(f"held-out preferences {pref[0]:.0%} → {pref[1]:.0%}")
    return verdict(True, PROMOTED, "; ".join(parts))
