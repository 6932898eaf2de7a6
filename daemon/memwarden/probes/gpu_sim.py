"""GPU backend "sim": VRAM read from the simulated-GPU file (see memwarden.gpu.simfile)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil

from memwarden.gpu import simfile
from memwarden.snapshots import Gpu, GpuProcess, GpuSnapshot


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


class SimGpuProbe:
    name = "gpu"
    backend = "sim"

    def __init__(self, path: Path, pid_alive: Callable[[int], bool] = simfile.pid_alive,
                 clock: Callable[[], float] = time.time):
        self.path = path
        self._alive = pid_alive
        self._clock = clock

    def read(self) -> GpuSnapshot:
        data = simfile.read(self.path)
        gpus = []
        for g in sorted(data["gpus"], key=lambda g: g["index"]):
            procs = tuple(GpuProcess(p["pid"], p["used_bytes"], _process_name(p["pid"]))
                          for p in g["processes"] if self._alive(p["pid"]))
            gpus.append(Gpu(
                index=g["index"], name=g.get("name", f"Sim GPU {g['index']}"), total_bytes=g["total_bytes"],
                used_bytes=min(g["total_bytes"], sum(p.used_bytes or 0 for p in procs)),
                temperature_c=g.get("temperature_c"), utilization_percent=g.get("utilization_percent"),
                processes=procs, uuid=f"SIM-{g['index']}"))
        return GpuSnapshot("sim", tuple(gpus), self._clock())
