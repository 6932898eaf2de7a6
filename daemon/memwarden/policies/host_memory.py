"""Host-memory policy: RAM, swap and PSI levels → alert conditions, plus the admission reserve."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from memwarden.alerts.model import Condition
from memwarden.config.schema import HostConfig
from memwarden.policies.levels import Level, Thresholds, Track, step
from memwarden.snapshots import HostSnapshot
from memwarden.units import format_size

METRICS = ("ram", "swap", "psi")


@dataclass(frozen=True)
class HostPolicyState:
    tracks: MappingProxyType = field(
        default_factory=lambda: MappingProxyType({m: Track() for m in METRICS}))


@dataclass(frozen=True)
class LevelChange:
    metric: str
    previous: Level
    level: Level
    inputs: dict[str, Any]


@dataclass(frozen=True)
class HostVerdict:
    state: HostPolicyState
    conditions: tuple[Condition, ...]
    changes: tuple[LevelChange, ...]


def thresholds(cfg: HostConfig) -> dict[str, Thresholds]:
    return {
        "ram": Thresholds(cfg.ram_warn_percent, cfg.ram_crit_percent, cfg.hysteresis_percent, cfg.hold),
        "swap": Thresholds(cfg.swap_warn_percent, cfg.swap_crit_percent, cfg.hysteresis_percent, cfg.hold),
        "psi": Thresholds(cfg.psi_warn_avg10, cfg.psi_crit_avg10, cfg.hysteresis_percent, cfg.hold),
    }


def metric_values(snap: HostSnapshot) -> dict[str, float | None]:
    return {
        "ram": snap.ram_used_percent,
        # No swap configured: nothing to alert about.
        "swap": snap.swap_used_percent if snap.swap_total > 0 else None,
        "psi": snap.pressure.some_avg10 if snap.pressure is not None else None,
    }


@dataclass(frozen=True)
class MetricLevel:
    """One host metric as `host` and the metrics show it: its value now, the level its track is at, the limits."""

    value: float | None  # None: this host has no swap, or no PSI: nothing to judge
    level: Level
    warn: float
    crit: float


def levels(snap: HostSnapshot, state: HostPolicyState, cfg: HostConfig) -> dict[str, MetricLevel]:
    """Each metric at its level, with its limits."""
    limits = thresholds(cfg)
    return {m: MetricLevel(value, state.tracks[m].level, limits[m].warn, limits[m].crit)
            for m, value in metric_values(snap).items()}


def _message(metric: str, level: Level, value: float, t: Thresholds, snap: HostSnapshot) -> str:
    if metric == "ram":
        return (f"RAM {value:.1f}% used, {format_size(snap.mem_available)} available "
                f"(warn {t.warn:g}%, critical {t.crit:g}%)")
    if metric == "swap":
        return (f"swap {value:.1f}% used ({format_size(snap.swap_used)} of {format_size(snap.swap_total)}; "
                f"warn {t.warn:g}%, critical {t.crit:g}%)")
    return f"memory pressure: tasks stalled {value:.1f}% of the last 10 s (warn {t.warn:g}%, critical {t.crit:g}%)"


def evaluate(snap: HostSnapshot, state: HostPolicyState, cfg: HostConfig, now: float) -> HostVerdict:
    limits = thresholds(cfg)
    tracks: dict[str, Track] = {}
    conditions: list[Condition] = []
    changes: list[LevelChange] = []
    for metric, value in metric_values(snap).items():
        before = state.tracks[metric]
        after = Track() if value is None else step(before, value, limits[metric], now)
        tracks[metric] = after
        inputs = {"metric": metric, "value": None if value is None else round(value, 2),
                  "warn": limits[metric].warn, "crit": limits[metric].crit,
                  "hysteresis": limits[metric].hysteresis, "hold_s": limits[metric].hold}
        if after.level != before.level:
            changes.append(LevelChange(metric, before.level, after.level, inputs))
        if after.level > Level.OK and value is not None:
            conditions.append(Condition(
                kind=f"host.{metric}", key="host", severity=after.level.label,
                message=_message(metric, after.level, value, limits[metric], snap),
                fields=MappingProxyType({**inputs, "mem_available": snap.mem_available,
                                         "mem_total": snap.mem_total})))
    return HostVerdict(HostPolicyState(MappingProxyType(tracks)), tuple(conditions), tuple(changes))


def admittable_bytes(snap: HostSnapshot, cfg: HostConfig) -> int:
    """RAM a new job may plan to take without eating into the reserve for critical services."""
    return max(0, snap.mem_available - cfg.reserve)


def admits(snap: HostSnapshot, cfg: HostConfig, nbytes: int) -> tuple[bool, str]:
    room = admittable_bytes(snap, cfg)
    if nbytes <= room:
        return True, f"{format_size(nbytes)} fits in {format_size(room)} admittable"
    return False, (f"{format_size(nbytes)} requested but only {format_size(room)} admittable "
                   f"({format_size(snap.mem_available)} available − {format_size(cfg.reserve)} reserve)")
