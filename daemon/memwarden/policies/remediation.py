"""The remediation ladder for one container: alert → restart → verify, within a restart budget.

Pure: given what is wrong, the container's action (label `memwarden.action` over `containers.action`), its
restart history and the clock, it says what to do and why: a Decision holds the action, the reason as a
constant (`why`) and the numbers behind it; text() and log_fields() put it in words. A restart that did not
bring the working set down is "ineffective"; each one in a row doubles the cooldown before the next try.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memwarden.units import HOUR

ACTIONS = ("alert", "restart", "ignore")

# Why a decision is what it is (the `why` of a Decision, and of its log line).
NOTHING_WRONG = "nothing_wrong"
IGNORED = "ignored"  # label memwarden.action=ignore (or containers.action)
ACTION_IS_ALERT = "action_is_alert"
BUDGET_SPENT = "budget_spent"  # a restart was due: max_restarts_per_hour already reached
COOLING_DOWN = "cooling_down"  # a restart was due: the (backed-off) cooldown since the last has not passed
RESTART = "restart"
WITHHELD = frozenset({BUDGET_SPENT, COOLING_DOWN})


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
    why: str  # one of the reasons above
    problem: str | None = None  # what is wrong ("leak", "idle leak"), None when nothing is
    restarts_last_hour: int = 0  # the restarts that spend the budget (see spends_budget)
    max_per_hour: int = 0
    since_s: float | None = None  # since the last restart (cooling down)
    wait_s: float | None = None  # the cooldown to wait after it (cooling down)

    @property
    def withheld(self) -> bool:
        """A restart was due, but the budget or the cooldown holds it back (not: the action is only to alert)."""
        return self.why in WITHHELD

    def withheld_text(self) -> str:
        """Why the restart is held back, in words (empty when it is not)."""
        if self.why == BUDGET_SPENT:
            return (f"restart budget spent ({self.restarts_last_hour} of {self.max_per_hour} in the last "
                    "hour)")
        if self.why == COOLING_DOWN:
            return f"cooling down after the last restart ({self.since_s or 0:.0f}s of {self.wait_s or 0:.0f}s)"
        return ""

    def text(self) -> str:
        """The decision in words, for alerts and logs."""
        if self.why == NOTHING_WRONG:
            return "nothing wrong"
        if self.why == IGNORED:
            return "memwarden.action=ignore"
        if self.why == ACTION_IS_ALERT:
            return f"{self.problem}; action is alert"
        if self.withheld:
            return f"{self.problem}; {self.withheld_text()}"
        return str(self.problem)

    def log_fields(self) -> dict[str, Any]:
        return {"action": self.action, "why": self.why, "problem": self.problem,
                "restarts_last_hour": self.restarts_last_hour, "max_per_hour": self.max_per_hour,
                "since_s": None if self.since_s is None else round(self.since_s, 1),
                "wait_s": self.wait_s, "reason": self.text()}


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


def spends_budget(restart: Restart, dry_run: bool) -> bool:
    """Does `restart` spend the budget and start a cooldown? One that happened does. One only logged (a dry
    run's) does in a dry run, which then says what a real run would do instead of logging the same restart every
    pass; a real run does not count it."""
    return dry_run or not restart.dry_run


def decide(problem: str | None, action: str, history: Sequence[Restart], now: float, max_per_hour: int,
           cooldown: float, dry_run: bool = False) -> Decision:
    """problem: None, or what is wrong ("leak", "idle leak"). dry_run: the daemon's, see spends_budget()."""
    if problem is None:
        return Decision("none", NOTHING_WRONG)
    if action == "ignore":
        return Decision("none", IGNORED, problem)
    if action == "alert":
        return Decision("alert", ACTION_IS_ALERT, problem)
    counted = [r for r in history if spends_budget(r, dry_run)]
    last_hour = sum(1 for r in counted if now - r.at < HOUR)
    numbers = {"restarts_last_hour": last_hour, "max_per_hour": max_per_hour}
    if last_hour >= max_per_hour:
        return Decision("alert", BUDGET_SPENT, problem, **numbers)
    if counted:
        wait = backoff(counted, cooldown)
        since = now - counted[-1].at
        if since < wait:
            return Decision("alert", COOLING_DOWN, problem, since_s=since, wait_s=wait, **numbers)
    return Decision("restart", RESTART, problem, **numbers)


def effective(before: int, after: int, drop_fraction: float = 0.5) -> bool:
    """Did a restart help? The working set must have fallen by at least `drop_fraction` of what it was."""
    return after <= before * (1 - drop_fraction)
