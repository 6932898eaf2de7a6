"""The hold in front of the alert lifecycle (pure): a condition is raised once it has lasted its kind's hold,
and an active alert resolves once its condition has been gone that long, so a reading that wavers for a few
seconds (a busy CPU slowing training steps, one failed probe call) neither raises nor resolves anything.

`hold()` sits between a source's conditions and `reconcile()`: it passes on the conditions whose hold is over,
and the conditions of active alerts still within their hold of being gone, so that reconcile keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from memwarden.alerts.model import ActiveAlert, Condition

Ident = tuple[str, str]
# (kind, key) → since when: a condition not yet raised was first seen then; an active alert was first missed then.
Since = Mapping[Ident, float]


def hold(active: Mapping[Ident, ActiveAlert], conditions: Iterable[Condition], scope: str, now: float,
         hold_of: Callable[[str], float], since: Since) -> tuple[list[Condition], dict[Ident, float]]:
    """The conditions reconcile should see now, and the new `since`. `now` is monotonic: a wall-clock step
    must not cut a hold short or stretch it."""
    mine = scope + "."
    seen = {c.ident: c for c in conditions}
    out: list[Condition] = []
    pending = {ident: t for ident, t in since.items() if not ident[0].startswith(mine)}
    for ident, cond in seen.items():
        if ident in active:
            out.append(cond)  # seen again: any count towards resolving starts over
            continue
        first = since.get(ident, now)
        if now - first >= hold_of(cond.kind):
            out.append(cond)
        else:
            pending[ident] = first  # not seen in a pass: dropped, so the condition must last unbroken
    for ident, alert in active.items():
        if ident in seen or not ident[0].startswith(mine):
            continue
        first = since.get(ident, now)
        if now - first < hold_of(ident[0]):
            out.append(alert.condition)
            pending[ident] = first
    return out, pending
