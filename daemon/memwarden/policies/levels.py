"""A threshold level with hysteresis and a hold time, so one spike (or one dip) does not flap an alert."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Level(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Thresholds:
    warn: float
    crit: float
    hysteresis: float  # points below a threshold before its level may clear
    hold: float  # seconds a new level must persist before it is adopted


@dataclass(frozen=True)
class Track:
    """Where one metric stands: its adopted level and the run of samples pushing it elsewhere."""

    level: Level = Level.OK
    run_since: float | None = None  # when the current run of samples away from `level` began
    run_bound: Level | None = None  # rising: the lowest level seen in the run; falling: the highest


def target_level(value: float, current: Level, t: Thresholds) -> Level:
    """The level `value` points to. A level already held stays until the value drops below its
    threshold minus the hysteresis."""
    for level, threshold in ((Level.CRITICAL, t.crit), (Level.WARNING, t.warn)):
        if value >= threshold or (current >= level and value >= threshold - t.hysteresis):
            return level
    return Level.OK


def step(track: Track, value: float, t: Thresholds, now: float) -> Track:
    """Advance one sample. A run of samples pointing up (or down) moves the level once it has lasted
    `hold` seconds, and only as far as every sample in the run agreed."""
    target = target_level(value, track.level, t)
    if target == track.level:
        return Track(track.level)
    rising = target > track.level
    same_run = (
        track.run_since is not None
        and track.run_bound is not None
        and (track.run_bound > track.level) == rising
    )
    if same_run:
        bound = min(track.run_bound, target) if rising else max(track.run_bound, target)
        since = track.run_since
    else:
        bound, since = target, now
    if now - since >= t.hold:
        return Track(bound)
    return Track(track.level, since, bound)
