"""Host memory: MemAvailable-based RAM use and swap (psutil) plus memory PSI."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from memwarden.probes.pressure import PressureUnavailable, read_pressure
from memwarden.snapshots import HostSnapshot


class HostProbe:
    name = "host"

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        virtual_memory: Callable[[], Any] = psutil.virtual_memory,
        swap_memory: Callable[[], Any] = psutil.swap_memory,
        clock: Callable[[], float] = time.time,
    ):
        self._proc_root = proc_root
        self._virtual_memory = virtual_memory
        self._swap_memory = swap_memory
        self._clock = clock

    def read(self) -> HostSnapshot:
        vm = self._virtual_memory()
        sw = self._swap_memory()
        try:
            pressure, pressure_error = read_pressure(self._proc_root), None
        except PressureUnavailable as exc:
            pressure, pressure_error = None, str(exc)
        return HostSnapshot(
            taken_at=self._clock(),
            mem_total=int(vm.total),
            mem_available=int(vm.available),
            swap_total=int(sw.total),
            swap_used=int(sw.used),
            pressure=pressure,
            pressure_error=pressure_error,
        )
