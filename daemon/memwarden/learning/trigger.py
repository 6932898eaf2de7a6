"""The trigger policy: which adapters are due for a training run, and why the others are not.

Pure: per-adapter sums of unconsolidated importance, the time each adapter's last run started, the adapters
with a run in progress, the config (importance_threshold, min_interval) and `now` in; one Decision per
adapter out, carrying its inputs so that it can be logged as `decision=learning.due …`.

An adapter is due when no run of it is in progress, its unconsolidated importance has reached the threshold,
and min_interval has passed since its last run started. The checks are made in that order and the first that
fails is the reason it is not due: `running`, `below_threshold` (short by how much), `min_interval` (how long
remains).

A due run starts at the next `learning.window` (a crontab line: its fire times are the moments a run may
start; `0 2 * * *` is 02:00 every day, `* 1-4 * * *` any minute from 01:00 to 04:59), or at once when the
window is empty: next_window_start().
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, tzinfo
from typing import Any, Protocol

from memwarden.units import format_duration

DUE = "due"
RUNNING = "running"
BELOW_THRESHOLD = "below_threshold"
MIN_INTERVAL = "min_interval"


class TriggerConfig(Protocol):
    importance_threshold: float
    min_interval: float


@dataclass(frozen=True)
class Decision:
    adapter: str
    due: bool
    reason: str  # due | running | below_threshold | min_interval
    message: str
    importance: float
    threshold: float
    last_run_at: float | None
    min_interval: float
    running: bool
    now: float
    shortfall: float  # importance still missing (0 when reached)
    wait_s: float  # time left of min_interval (0 when passed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def log_fields(self) -> dict[str, Any]:
        return {"decision": "learning.due", **{k: v for k, v in asdict(self).items() if k != "message"}}


def _fmt(seconds: float) -> str:
    return format_duration(max(0.0, seconds))


def decide(adapter: str, importance: float, last_run_at: float | None, running: bool, threshold: float,
           min_interval: float, now: float) -> Decision:
    shortfall = max(0.0, threshold - importance)
    next_allowed = None if last_run_at is None else last_run_at + min_interval
    wait = 0.0 if next_allowed is None else max(0.0, next_allowed - now)
    base = dict(adapter=adapter, importance=importance, threshold=threshold, last_run_at=last_run_at,
                min_interval=min_interval, running=running, now=now, shortfall=shortfall, wait_s=wait)
    if running:
        return Decision(due=False, reason=RUNNING, message="a run of this adapter is already in progress", **base)
    if shortfall > 0:
        return Decision(due=False, reason=BELOW_THRESHOLD,
                        message=f"importance {importance:g} of {threshold:g}: {shortfall:g} short", **base)
    if wait > 0 and last_run_at is not None and last_run_at > now:
        # The wall clock was set back past the last run's start: the message says so (a negative "ago" would
        # mean nothing), and runs wait, never burst, until min_interval after that start as the times are kept.
        return Decision(due=False, reason=MIN_INTERVAL,
                        message=f"importance {importance:g} ≥ {threshold:g}, but the last run started "
                                f"{_fmt(last_run_at - now)} in the future (the clock was set back): no run until "
                                f"min_interval {_fmt(min_interval)} after it", **base)
    if wait > 0:
        return Decision(due=False, reason=MIN_INTERVAL,
                        message=f"importance {importance:g} ≥ {threshold:g}, but the last run started "
                                f"{_fmt(now - last_run_at)} ago: {_fmt(wait)} of min_interval "
                                f"{_fmt(min_interval)} remain", **base)
    since = "no run before" if last_run_at is None else f"last run started {_fmt(now - last_run_at)} ago"
    return Decision(due=True, reason=DUE, message=f"importance {importance:g} ≥ {threshold:g}; {since}", **base)


def due_adapters(sums: Mapping[str, float], last_runs: Mapping[str, float], running: Collection[str],
                 config: TriggerConfig, now: float) -> list[Decision]:
    """One decision per adapter in `sums` or `running`, sorted by adapter name."""
    return [decide(a, float(sums.get(a, 0.0)), last_runs.get(a), a in running, float(config.importance_threshold),
                   float(config.min_interval), now) for a in sorted({*sums, *running})]


def next_window_start(cron: str, now: float, tz: tzinfo | str | None = None) -> float:
    """When a run due at `now` may start: the next fire time of the crontab line `cron` at or after `now`
    (local time unless `tz`), or `now` itself when `cron` is empty."""
    if not cron:
        return now
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(cron, timezone=tz)
    fire = trigger.get_next_fire_time(None, datetime.fromtimestamp(now, trigger.timezone))
    if fire is None:  # a crontab line always fires again; kept for the type
        raise ValueError(f"the window {cron!r} never opens again")
    return max(now, fire.timestamp())
