"""GPU backend "nvml": NVIDIA's management library through nvidia-ml-py (import pynvml).

NVML is initialised lazily and again after a failure, so a driver reload or a GPU that fell off the bus
shows up as a degraded probe that recovers, never as a crash.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from memwarden.snapshots import Gpu, GpuProcess, GpuSnapshot


class GpuProbeError(Exception):
    pass


def load_nvml() -> Any:
    import pynvml  # the `gpu` extra (nvidia-ml-py); absent on machines without NVIDIA drivers

    return pynvml


class NvmlGpuProbe:
    name = "gpu"
    backend = "nvml"

    def __init__(self, nvml: Any = None, clock: Callable[[], float] = time.time):
        self._nvml = nvml
        self._clock = clock
        self._handles: list[Any] | None = None
        self._lock = threading.Lock()

    def init(self) -> None:
        """Initialise NVML; raises GpuProbeError when there is no usable driver."""
        with self._lock:
            self._init_locked()

    def _init_locked(self) -> None:
        try:
            if self._nvml is None:
                self._nvml = load_nvml()
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except ImportError as exc:
            raise GpuProbeError(f"nvidia-ml-py is not installed ({exc}); install memwarden[gpu]") from None
        except Exception as exc:  # noqa: BLE001 - every NVMLError subclass means "no usable NVML"
            self._handles = None
            raise GpuProbeError(f"NVML init failed: {exc}") from None

    def _reset(self) -> None:
        self._handles = None
        # Shutting down a broken NVML may fail too; the next init decides whether it works.
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()

    def _optional(self, call: Callable[[], Any]) -> Any:
        """Temperature, utilization and per-process use are not supported on every board: None then."""
        try:
            return call()
        except self._nvml.NVMLError as exc:
            if self._is_lost(exc):
                raise
            return None

    def _is_lost(self, exc: Exception) -> bool:
        lost = {getattr(self._nvml, n, None) for n in ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_UNINITIALIZED",
                                                       "NVML_ERROR_DRIVER_NOT_LOADED")}
        return getattr(exc, "value", None) in lost

    def _memory(self, handle: Any) -> tuple[int, int]:
        nv = self._nvml
        try:
            # v2 counts reserved memory apart from "used", as nvidia-smi has done since R510.
            mem = nv.nvmlDeviceGetMemoryInfo(handle, version=nv.nvmlMemory_v2)
        except (TypeError, AttributeError, nv.NVMLError_FunctionNotFound, nv.NVMLError_NotSupported):
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
        return int(mem.total), int(mem.used)

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...] | None:
        nv = self._nvml
        procs = self._optional(lambda: list(nv.nvmlDeviceGetComputeRunningProcesses(handle)))
        if procs is None:
            return None
        graphics = self._optional(lambda: list(nv.nvmlDeviceGetGraphicsRunningProcesses(handle))) or []
        merged: dict[int, int | None] = {}
        for p in procs + graphics:
            used = getattr(p, "usedGpuMemory", None)
            prior = merged.get(p.pid)
            merged[p.pid] = used if prior is None else prior + (used or 0)
        return tuple(GpuProcess(pid, used) for pid, used in sorted(merged.items()))

    def read(self) -> GpuSnapshot:
        with self._lock:
            if self._handles is None:
                self._init_locked()
            nv = self._nvml
            gpus = []
            try:
                for index, h in enumerate(self._handles or []):
                    total, used = self._memory(h)
                    name = nv.nvmlDeviceGetName(h)
                    temp = self._optional(lambda h=h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
                    util = self._optional(lambda h=h: nv.nvmlDeviceGetUtilizationRates(h).gpu)
                    uuid = self._optional(lambda h=h: nv.nvmlDeviceGetUUID(h))
                    gpus.append(Gpu(index, name if isinstance(name, str) else name.decode(), total, used,
                                    temp, util, self._processes(h), uuid))
            except nv.NVMLError as exc:
                lost = self._is_lost(exc)
                self._reset()
                raise GpuProbeError(f"NVML {'lost the GPU' if lost else 'call failed'}: {exc}") from None
        return GpuSnapshot("nvml", tuple(gpus), self._clock())
