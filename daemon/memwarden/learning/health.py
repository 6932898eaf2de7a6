"""Training health from progress events (pure): the alerts a training lead watches for (story 3)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from memwarden.alerts.model import Condition

GRAD_NORM_HIGH = 10.0
GRAD_NORM_LOW = 0.01
THROUGHPUT_DROP = 0.20  # tokens/s more than 20 % under the run's own baseline
BASELINE_STEPS = 5  # the baseline is the median of the first steps after warm-up of the run's timing


def assess(adapter: str, steps: Sequence[dict[str, Any]]) -> list[Condition]:
    """steps: the run's "step" events so far, oldest first. Conditions about the latest one."""
    if not steps:
        return []
    last = steps[-1]
    fields = MappingProxyType({k: last.get(k) for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s")})
    out = []
    loss = last.get("loss")
    if loss is None or (isinstance(loss, float) and not math.isfinite(loss)):
        out.append(Condition("training.loss", adapter, "critical",
                             f"training {adapter}: loss is {loss} at step {last.get('step')}", fields))
    norm = last.get("grad_norm")
    if isinstance(norm, int | float) and math.isfinite(norm):
        if norm > GRAD_NORM_HIGH:
            out.append(Condition("training.grad_norm", adapter, "warning",
                                 f"training {adapter}: gradient norm {norm:.2f} > {GRAD_NORM_HIGH:g} "
                                 f"at step {last.get('step')} (exploding?)", fields))
        elif norm < GRAD_NORM_LOW:
            out.append(Condition("training.grad_norm", adapter, "warning",
                                 f"training {adapter}: gradient norm {norm:.4f} < {GRAD_NORM_LOW:g} "
                                 f"at step {last.get('step')} (vanishing? nothing to learn?)", fields))
    rates = [s["tokens_per_s"] for s in steps[1:] if isinstance(s.get("tokens_per_s"), int | float)]
    if len(rates) > BASELINE_STEPS:
        baseline = statistics.median(rates[:BASELINE_STEPS])
        current = statistics.median(rates[-3:])
        if baseline > 0 and current < baseline * (1 - THROUGHPUT_DROP):
            out.append(Condition("training.throughput", adapter, "warning",
                                 f"training {adapter}: {current:.0f} tokens/s, {100 * (1 - current / baseline):.0f}% "
                                 f"below the run's {baseline:.0f}", MappingProxyType({**fields, "baseline": baseline})))
    return out
