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


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int | None  # None: the driver cannot tell (NVML_VALUE_NOT_AVAILABLE)
    name: str | None = None


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    temperature_c: float | None = None
    utilization_percent: float | None = None
    processes: tuple[GpuProcess, ...] | None = None  # None: per-process use unknown
    uuid: str | None = None

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass(frozen=True)
class GpuSnapshot:
    backend: str  # "nvml", "sim" or "none"
    gpus: tuple[Gpu, ...]
    taken_at: float
    error: str | None = None  # set when the backend is degraded (driver error, GPU lost, bad sim file)

    def gpu(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus if g.index == index), None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for g, d in zip(self.gpus, out["gpus"], strict=True):
            d["free_bytes"] = g.free_bytes
            d["used_percent"] = round(g.used_percent, 2)
        return out


@dataclass(frozen=True)
class LoadedModel:
    """A model resident in Ollama (from /api/ps)."""

    name: str
    size: int
    size_vram: int
    expires_at: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class InstalledModel:
    """A model Ollama can load (from /api/tags)."""

    name: str
    size: int
    digest: str | None = None
    family: str | None = None


@dataclass(frozen=True)
class OllamaSnapshot:
    url: str
    reachable: bool
    taken_at: float
    loaded: tuple[LoadedModel, ...] = ()
    installed: tuple[InstalledModel, ...] = ()
    version: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ContainerMemory:
    id: str
    name: str
    image: str
    working_set: int  # usage − inactive_file, as `docker stats` and cAdvisor report it
    usage: int
    limit: int  # HostConfig.Memory; 0 = no limit
    rss: int | None = None  # anon/rss where the cgroup reports it
    restart_count: int = 0
    compose_service: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    started_at: str | None = None
    source: str = "cgroup"  # "cgroup" files or the Docker "api"

    def label(self, key: str, default: str | None = None) -> str | None:
        return dict(self.labels).get(key, default)


@dataclass(frozen=True)
class ContainersSnapshot:
    taken_at: float
    containers: tuple[ContainerMemory, ...]
    cgroup_version: int | None = None
    # Running containers whose memory could not be read this pass: still there, so their history is kept.
    unread: frozenset[str] = frozenset()
