from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from memwarden.config.schema import GpuConfig
from memwarden.probes import gpu_nvml
from memwarden.probes.gpu import NoGpuProbe, make_gpu_probe
from memwarden.probes.gpu_nvml import GpuProbeError, NvmlGpuProbe
from memwarden.probes.gpu_sim import SimGpuProbe

GiB = 1024**3
MiB = 1024**2


class NVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"NVML error code {self.value}"


NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999


class NVMLError_NotSupported(NVMLError):
    def __init__(self):
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


class NVMLError_FunctionNotFound(NVMLError):
    def __init__(self):
        super().__init__(NVML_ERROR_FUNCTION_NOT_FOUND)


@dataclass
class Device:
    total: int = 24 * GiB
    used: int = 6 * GiB
    reserved: int = 300 * MiB  # what v1 adds to "used"
    name: Any = "NVIDIA Fake 24GB"
    temperature: Any = 55  # a value, or an exception to raise
    utilization: Any = 12
    uuid: Any = "GPU-0000"
    compute: Any = field(default_factory=list)  # list of (pid, usedGpuMemory) or an exception
    graphics: Any = field(default_factory=list)


def _raise_or(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


class FakeNvml:
    """The slice of pynvml NvmlGpuProbe uses. Each attribute may be replaced per test."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVML_ERROR_UNINITIALIZED = NVML_ERROR_UNINITIALIZED
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, *devices: Device):
        self.devices = list(devices) or [Device()]
        self.nvmlMemory_v2 = 0x2000028  # an instance attribute, so a test can delete it (older bindings)
        self.init_calls = 0
        self.shutdown_calls = 0
        self.init_error: BaseException | None = None
        self.v2_error: BaseException | None = None  # raised by a versioned nvmlDeviceGetMemoryInfo
        self.memory_error: BaseException | None = None  # raised by every nvmlDeviceGetMemoryInfo
        self.memory_calls: list[Any] = []

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Device:
        return self.devices[i]

    def nvmlDeviceGetMemoryInfo(self, handle: Device, **kwargs: Any) -> SimpleNamespace:
        self.memory_calls.append(kwargs.get("version"))
        if self.memory_error is not None:
            raise self.memory_error
        if "version" in kwargs:
            assert kwargs["version"] == self.nvmlMemory_v2
            if self.v2_error is not None:
                raise self.v2_error
            return SimpleNamespace(total=handle.total, used=handle.used, reserved=handle.reserved,
                                   free=handle.total - handle.used - handle.reserved)
        return SimpleNamespace(total=handle.total, used=handle.used + handle.reserved,
                               free=handle.total - handle.used - handle.reserved)

    def nvmlDeviceGetName(self, handle: Device) -> Any:
        return _raise_or(handle.name)

    def nvmlDeviceGetTemperature(self, handle: Device, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return _raise_or(handle.temperature)

    def nvmlDeviceGetUtilizationRates(self, handle: Device) -> SimpleNamespace:
        return SimpleNamespace(gpu=_raise_or(handle.utilization), memory=0)

    def nvmlDeviceGetUUID(self, handle: Device) -> str:
        return _raise_or(handle.uuid)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Device) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in _raise_or(handle.compute)]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Device) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in _raise_or(handle.graphics)]


def probe_for(nv: FakeNvml) -> NvmlGpuProbe:
    return NvmlGpuProbe(nv, clock=lambda: 42.0)


# ---- a healthy read ----------------------------------------------------------------------------------------


def test_read_reports_totals_and_used_from_memory_v2():
    nv = FakeNvml(Device(total=24 * GiB, used=6 * GiB, name="Card A", temperature=61, utilization=77,
                         uuid="GPU-a"),
                  Device(total=12 * GiB, used=1 * GiB, name=b"Card B", uuid="GPU-b"))
    snap = probe_for(nv).read()
    assert snap.backend == "nvml"
    assert snap.taken_at == 42.0
    assert nv.init_calls == 1
    assert nv.memory_calls == [nv.nvmlMemory_v2, nv.nvmlMemory_v2]
    a, b = snap.gpus
    assert (a.index, a.name, a.total_bytes, a.used_bytes) == (0, "Card A", 24 * GiB, 6 * GiB)
    assert (a.temperature_c, a.utilization_percent, a.uuid) == (61, 77, "GPU-a")
    assert (b.index, b.name, b.total_bytes, b.used_bytes, b.uuid) == (1, "Card B", 12 * GiB, 1 * GiB, "GPU-b")


def test_init_is_lazy_and_happens_once():
    nv = FakeNvml()
    probe = probe_for(nv)
    assert nv.init_calls == 0
    probe.read()
    probe.read()
    assert nv.init_calls == 1
    assert nv.shutdown_calls == 0


@pytest.mark.parametrize(
    "error",
    [TypeError("unexpected keyword argument 'version'"), NVMLError_FunctionNotFound(), NVMLError_NotSupported()],
    ids=["old-bindings", "function-not-found", "not-supported"],
)
def test_falls_back_to_memory_v1_when_v2_is_unavailable(error):
    nv = FakeNvml(Device(total=16 * GiB, used=4 * GiB, reserved=256 * MiB))
    nv.v2_error = error
    g = probe_for(nv).read().gpus[0]
    assert nv.memory_calls == [nv.nvmlMemory_v2, None]
    assert (g.total_bytes, g.used_bytes) == (16 * GiB, 4 * GiB + 256 * MiB)


def test_falls_back_to_v1_when_bindings_lack_the_v2_constant():
    nv = FakeNvml(Device(total=16 * GiB, used=4 * GiB, reserved=256 * MiB))
    del nv.nvmlMemory_v2
    g = probe_for(nv).read().gpus[0]
    assert g.used_bytes == 4 * GiB + 256 * MiB
    assert nv.memory_calls == [None]


# ---- processes ----------------------------------------------------------------------------------------------


def test_processes_merge_compute_and_graphics_and_keep_unknown_use_as_none():
    nv = FakeNvml(Device(compute=[(300, 2 * GiB), (100, None), (200, 1 * GiB)],
                         graphics=[(200, 100 * MiB), (400, None)]))
    g = probe_for(nv).read().gpus[0]
    assert [(p.pid, p.used_bytes) for p in g.processes] == [
        (100, None), (200, 1 * GiB + 100 * MiB), (300, 2 * GiB), (400, None)]


def test_processes_unsupported_is_none_and_graphics_unsupported_is_ignored():
    nv = FakeNvml(Device(compute=NVMLError_NotSupported()), Device(compute=[(7, GiB)],
                                                                   graphics=NVMLError_NotSupported()))
    g0, g1 = probe_for(nv).read().gpus
    assert g0.processes is None
    assert [(p.pid, p.used_bytes) for p in g1.processes] == [(7, GiB)]


# ---- optional readings -------------------------------------------------------------------------------------


def test_unsupported_temperature_utilization_and_uuid_are_none():
    nv = FakeNvml(Device(temperature=NVMLError_NotSupported(), utilization=NVMLError(NVML_ERROR_NOT_SUPPORTED),
                         uuid=NVMLError_NotSupported()))
    g = probe_for(nv).read().gpus[0]
    assert (g.temperature_c, g.utilization_percent, g.uuid) == (None, None, None)
    assert g.used_bytes == 6 * GiB


# ---- failures ------------------------------------------------------------------------------------------------


def test_gpu_lost_raises_probe_error_and_reinitialises_on_next_read():
    nv = FakeNvml()
    probe = probe_for(nv)
    probe.read()
    nv.memory_error = NVMLError(NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(GpuProbeError, match="lost the GPU"):
        probe.read()
    assert nv.shutdown_calls == 1
    assert nv.init_calls == 1
    nv.memory_error = None
    snap = probe.read()
    assert nv.init_calls == 2
    assert snap.gpus[0].used_bytes == 6 * GiB


def test_gpu_lost_in_an_optional_reading_is_not_swallowed():
    nv = FakeNvml(Device(temperature=NVMLError(NVML_ERROR_GPU_IS_LOST)))
    probe = probe_for(nv)
    with pytest.raises(GpuProbeError, match="lost the GPU"):
        probe.read()
    nv.devices[0].temperature = 50
    assert probe.read().gpus[0].temperature_c == 50
    assert nv.init_calls == 2


def test_other_nvml_failure_is_a_failed_call_and_also_reinitialises():
    nv = FakeNvml(Device(name=NVMLError(NVML_ERROR_UNKNOWN)))
    probe = probe_for(nv)
    with pytest.raises(GpuProbeError, match="call failed: NVML error code 999"):
        probe.read()
    nv.devices[0].name = "back"
    assert probe.read().gpus[0].name == "back"
    assert nv.init_calls == 2


def test_init_failure_raises_probe_error_on_init_and_read_then_recovers():
    nv = FakeNvml()
    nv.init_error = NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    probe = probe_for(nv)
    with pytest.raises(GpuProbeError, match="NVML init failed: NVML error code 9"):
        probe.init()
    with pytest.raises(GpuProbeError, match="NVML init failed"):
        probe.read()
    nv.init_error = None
    assert len(probe.read().gpus) == 1
    assert nv.init_calls == 3


def test_missing_bindings_say_how_to_install(monkeypatch):
    def no_pynvml():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(gpu_nvml, "load_nvml", no_pynvml)
    with pytest.raises(GpuProbeError, match=r"nvidia-ml-py is not installed.*memwarden\[gpu\]"):
        NvmlGpuProbe().init()


# ---- make_gpu_probe (memwarden.probes.gpu) -----------------------------------------------------------------


def broken_nvml() -> FakeNvml:
    nv = FakeNvml()
    nv.init_error = NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    return nv


def test_auto_uses_nvml_when_it_initialises():
    nv = FakeNvml()
    probe = make_gpu_probe(GpuConfig(backend="auto"), nv)
    assert isinstance(probe, NvmlGpuProbe)
    assert nv.init_calls == 1
    assert len(probe.read().gpus) == 1
    assert nv.init_calls == 1  # already initialised


def test_auto_falls_back_to_no_gpu_with_the_reason():
    probe = make_gpu_probe(GpuConfig(backend="auto"), broken_nvml())
    assert isinstance(probe, NoGpuProbe)
    assert probe.backend == "none"
    assert probe.why.startswith("gpu.backend auto: NVML init failed")
    assert "NVML error code 9" in probe.why
    snap = probe.read()
    assert (snap.backend, snap.gpus) == ("none", ())


def test_auto_without_bindings_says_so(monkeypatch):
    def no_pynvml():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(gpu_nvml, "load_nvml", no_pynvml)
    probe = make_gpu_probe(GpuConfig(backend="auto"))
    assert isinstance(probe, NoGpuProbe)
    assert "nvidia-ml-py is not installed" in probe.why


def test_nvml_backend_keeps_a_failing_probe_to_retry():
    nv = broken_nvml()
    probe = make_gpu_probe(GpuConfig(backend="nvml"), nv)
    assert isinstance(probe, NvmlGpuProbe)
    assert nv.init_calls == 0  # not initialised yet: the first read reports the failure as degraded
    with pytest.raises(gpu_nvml.GpuProbeError):
        probe.read()
    nv.init_error = None
    assert len(probe.read().gpus) == 1


def test_sim_backend_reads_the_configured_file(tmp_path):
    path = tmp_path / "gpus.json"
    probe = make_gpu_probe(GpuConfig(backend="sim", sim_file=path))
    assert isinstance(probe, SimGpuProbe)
    assert probe.path == path


def test_none_backend():
    probe = make_gpu_probe(GpuConfig(backend="none"), FakeNvml())
    assert isinstance(probe, NoGpuProbe)
    assert probe.why == "gpu.backend is none"
    assert probe.read().gpus == ()


def test_no_gpu_probe_uses_its_clock():
    assert NoGpuProbe(clock=lambda: 7.0).read().taken_at == 7.0
