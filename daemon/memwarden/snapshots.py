"""Immutable readings of the world, produced by probes and consumed by policies."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Pressure:
    """One line pair of /proc/pressure/memory (percent of wall time stalled; totals in µs)."""

    some_avg10: float
    some_avg60: float
    some_total_us: int
    full_avg10: float
    full_avg60: float
    full_total_us: int


@dataclass(frozen=True)
class HostSnapshot:
    taken_at: float  # wall clock, for people
    mem_total: int
    mem_available: int
    swap_total: int
    swap_used: int
    pressure: Pressure | None  # None: the kernel has no PSI (reported, not an error)
    pressure_error: str | None = None

    @property
    def ram_used_percent(self) -> float:
        if self.mem_total <= 0:
            return 0.0
        return 100.0 * (self.mem_total - self.mem_available) / self.mem_total

    @property
    def swap_used_percent(self) -> float:
        return 100.0 * self.swap_used / self.swap_total if self.swap_total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ram_used_percent"] = round(self.ram_used_percent, 2)
        out["ram_available_percent"] = round(100.0 - self.ram_used_percent, 2)
        out["swap_used_percent"] = round(self.swap_used_percent, 2)
        return out
