"""Training health from progress events (pure): the alerts a training lead watches for (story 3)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from memwarden.alerts.model import Condition

GRAD_NORM_HIGH = 10.0
GRAD_NORM_LOW = 0.01
THROUGHPUT_DROP = 0.20  # tokens/s more than 20 % under the run's own baseline
BASELINE_STEPS = 5  # the baseline is the median of the first steps after warm-up of the run's timing


class Steps(Protocol):
    """A phase's step events (progress.StepHistory): its first ones and its latest ones, oldest first."""

    first: Sequence[Mapping[str, Any]]
    recent: Sequence[Mapping[str, Any]]
    seen: int


def _rates(steps: Iterable[Mapping[str, Any]]) -> list[float]:
    return [s["tokens_per_s"] for s in steps if isinstance(s.get("tokens_per_s"), int | float)]


def assess(adapter: str, steps: Steps) -> list[Condition]:
    """Conditions about the latest step. Throughput is compared with the run's own baseline: the median of
    the first BASELINE_STEPS rated steps after the first (which carries the warm-up), once more steps than
    that have run."""
    if not steps.recent:
        return []
    last = steps.recent[-1]
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
    baseline_rates = _rates(steps.first[1:])[:BASELINE_STEPS]
    if len(baseline_rates) == BASELINE_STEPS and steps.seen > BASELINE_STEPS + 1:
        baseline = statistics.median(baseline_rates)
        recent = _rates(steps.recent)[-3:]
        current = statistics.median(recent) if recent else baseline
        if baseline > 0 and current < baseline * (1 - THROUGHPUT_DROP):
            out.append(Condition("training.throughput", adapter, "warning",
                                 f"training {adapter}: {current:.0f} tokens/s, {100 * (1 - current / baseline):.0f}% "
                                 f"below the run's {baseline:.0f}", MappingProxyType({**fields, "baseline": baseline})))
    return out
