"""GPU health policy: VRAM use and temperature per GPU → alert conditions (with hysteresis and hold)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from memwarden.alerts.model import Condition
from memwarden.config.schema import GpuConfig, HostConfig
from memwarden.policies.levels import Level, Thresholds, Track, step
from memwarden.snapshots import GpuSnapshot
from memwarden.units import format_size


@dataclass(frozen=True)
class GpuPolicyState:
    tracks: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class GpuVerdict:
    state: GpuPolicyState
    conditions: tuple[Condition, ...]
    changes: tuple[tuple[str, Level, Level, dict], ...]


def evaluate(snap: GpuSnapshot, state: GpuPolicyState, cfg: GpuConfig, host: HostConfig,
             now: float) -> GpuVerdict:
    """host supplies the hysteresis and hold shared by every threshold policy."""
    limits = {
        "vram": Thresholds(cfg.vram_warn_percent, cfg.vram_crit_percent, host.hysteresis_percent, host.hold),
        "temperature": Thresholds(cfg.temp_warn_c, cfg.temp_crit_c, host.hysteresis_percent, host.hold),
    }
    tracks: dict[tuple[str, int], Track] = {}
    conditions: list[Condition] = []
    changes = []
    for gpu in snap.gpus:
        values = {"vram": gpu.used_percent, "temperature": gpu.temperature_c}
        for metric, value in values.items():
            if value is None:
                continue
            before = state.tracks.get((metric, gpu.index), Track())
            after = step(before, value, limits[metric], now)
            tracks[(metric, gpu.index)] = after
            t = limits[metric]
            inputs = {"metric": metric, "gpu": gpu.index, "value": round(value, 2), "warn": t.warn, "crit": t.crit,
                      "hold_s": t.hold}
            if after.level != before.level:
                changes.append((f"gpu{gpu.index}.{metric}", before.level, after.level, inputs))
            if after.level > Level.OK:
                if metric == "vram":
                    message = (f"GPU {gpu.index} ({gpu.name}) VRAM {value:.1f}% used, "
                               f"{format_size(gpu.free_bytes)} free (warn {t.warn:g}%, critical {t.crit:g}%)")
                else:
                    message = (f"GPU {gpu.index} ({gpu.name}) at {value:.0f} °C "
                               f"(warn {t.warn:g} °C, critical {t.crit:g} °C)")
                conditions.append(Condition(f"gpu.{metric}", f"gpu{gpu.index}", after.level.label, message,
                                            MappingProxyType(inputs)))
    return GpuVerdict(GpuPolicyState(MappingProxyType(tracks)), tuple(conditions), tuple(changes))
