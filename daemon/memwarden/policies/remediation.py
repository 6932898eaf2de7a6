"""The remediation ladder for one container: alert → restart → verify, within a restart budget.

Pure: given what is wrong, the container's action (label `memwarden.action` over `containers.action`), its
restart history and the clock, it says what to do and why. A restart that did not bring the working set down
is "ineffective"; each one in a row doubles the cooldown before the next try.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ACTIONS = ("alert", "restart", "ignore")
HOUR = 3600.0


@dataclass(frozen=True)
class Restart:
    at: float
    working_set_before: int
    working_set_after: int | None = None
    effective: bool | None = None  # None until verified
    dry_run: bool = False


@dataclass(frozen=True)
class Decision:
    action: str  # none | alert | restart
    reason: str


def container_action(label: str | None, default: str) -> tuple[str, str | None]:
    """The action in force and, for a bad label, the complaint about it."""
    if label is None:
        return default, None
    if label in ACTIONS:
        return label, None
    return default, f"label memwarden.action={label!r} is not one of {', '.join(ACTIONS)}; using {default!r}"


def backoff(history: Sequence[Restart], cooldown: float) -> float:
    """The wait after the last restart: the cooldown, doubled for each ineffective restart in a row."""
    streak = 0
    for r in reversed(history):
        if r.effective is False:
            streak += 1
        else:
            break
    return cooldown * (2 ** min(streak, 10))


def decide(problem: str | None, action: str, history: Sequence[Restart], now: float, max_per_hour: int,
           cooldown: float) -> Decision:
    """problem: None, or what is wrong ("leak", "idle leak") in words for the log."""
    if problem is None or action == "ignore":
        return Decision("none", "nothing wrong" if problem is None else "memwarden.action=ignore")
    if action == "alert":
        return Decision("alert", f"{problem}; action is alert")
    real = [r for r in history if not r.dry_run]
    last_hour = [r for r in real if now - r.at < HOUR]
    if len(last_hour) >= max_per_hour:
        return Decision("alert", f"{problem}; restart budget spent ({len(last_hour)} of {max_per_hour} in the "
                                 "last hour)")
    if real:
        wait = backoff(real, cooldown)
        since = now - real[-1].at
        if since < wait:
            return Decision("alert", f"{problem}; cooling down after the last restart "
                                     f"({since:.0f}s of {wait:.0f}s)")
    return Decision("restart", problem)


def effective(before: int, after: int, drop_fraction: float = 0.5) -> bool:
    """Did a restart help? The working set must have fallen by at least `drop_fraction` of what it was."""
    return after <= before * (1 - drop_fraction)
