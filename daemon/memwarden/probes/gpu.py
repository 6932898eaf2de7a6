"""Choose the GPU backend: nvml, sim, none, or auto (nvml when it initialises, else none)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from memwarden.probes.gpu_nvml import GpuProbeError, NvmlGpuProbe
from memwarden.probes.gpu_sim import SimGpuProbe
from memwarden.snapshots import GpuSnapshot


class NoGpuProbe:
    name = "gpu"
    backend = "none"

    def __init__(self, why: str = "gpu.backend is none", clock: Callable[[], float] = time.time):
        self.why = why
        self._clock = clock

    def read(self) -> GpuSnapshot:
        return GpuSnapshot("none", (), self._clock())


def make_gpu_probe(cfg: Any, nvml: Any = None) -> Any:
    """cfg is a GpuConfig. With backend=auto a machine without NVIDIA drivers gets NoGpuProbe, saying why."""
    if cfg.backend == "sim":
        return SimGpuProbe(cfg.sim_file)
    if cfg.backend == "none":
        return NoGpuProbe()
    probe = NvmlGpuProbe(nvml)
    if cfg.backend == "nvml":
        return probe  # a failing init is reported by the probe as a degraded state, and retried
    try:
        probe.init()
    except GpuProbeError as exc:
        return NoGpuProbe(f"gpu.backend auto: {exc}")
    return probe
