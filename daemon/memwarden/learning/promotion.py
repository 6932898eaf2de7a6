"""Promote a trained version, or keep the current one and say why (pure).

A run is promoted only when it learned (the holdout loss on the new memories went down) and did not forget
(the loss on a probe set of earlier memories rose by at most ε, relative). Memories are marked consolidated in
the same transaction that records the promotion — never before, never twice (see publisher.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    improvement: float | None  # relative holdout loss drop (0.1 = 10 % lower)
    forgetting: float | None  # relative probe loss rise (0.02 = 2 % higher)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def judge(ev: Mapping[str, Any], epsilon: float) -> Verdict:
    before, after = ev.get("holdout_loss_before"), ev.get("holdout_loss_after")
    if not (_finite(before) and _finite(after)) or before <= 0:
        return Verdict(False, f"no usable holdout evaluation (before={before}, after={after})", None, None)
    improvement = (before - after) / before
    forgetting = None
    p_before, p_after = ev.get("probe_loss_before"), ev.get("probe_loss_after")
    if _finite(p_before) and _finite(p_after) and p_before > 0:
        forgetting = (p_after - p_before) / p_before
    if after >= before:
        return Verdict(False, f"holdout loss did not improve ({before:.4f} → {after:.4f})", improvement, forgetting)
    if forgetting is not None and forgetting > epsilon:
        return Verdict(False, f"forgot too much: loss on earlier memories rose {forgetting:.1%} "
                              f"({p_before:.4f} → {p_after:.4f}), more than ε = {epsilon:.1%}", improvement, forgetting)
    probe = "no earlier memories to probe" if forgetting is None else f"earlier memories {forgetting:+.1%}"
    return Verdict(True, f"holdout loss {before:.4f} → {after:.4f} ({improvement:.1%} better); {probe}",
                   improvement, forgetting)
