import subprocess

import pytest

from memwarden.gpu import simfile
from memwarden.gpu.simfile import SimFileError
from memwarden.probes.gpu_sim import SimGpuProbe

GiB = 1024**3


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sim(tmp_path):
    path = tmp_path / "gpus.json"
    simfile.create(path, [
        {"index": 1, "name": "Sim B", "total_bytes": 8 * GiB, "temperature_c": 71.5, "utilization_percent": 33},
        {"index": 0, "total_bytes": 12 * GiB},
    ])
    return path


def test_used_bytes_count_only_alive_pids(sim, sleeper, dead_pid):
    simfile.book(sim, 0, sleeper.pid, 3 * GiB)
    simfile.book(sim, 0, dead_pid, 5 * GiB)
    snap = SimGpuProbe(sim, clock=lambda: 123.0).read()
    g0 = snap.gpu(0)
    assert g0 is not None
    assert g0.used_bytes == 3 * GiB
    assert g0.free_bytes == 9 * GiB
    assert [p.pid for p in g0.processes] == [sleeper.pid]
    assert g0.processes[0].used_bytes == 3 * GiB
    assert g0.processes[0].name == "sleep"
    assert snap.backend == "sim"
    assert snap.taken_at == 123.0


def test_injected_pid_alive_decides(sim):
    simfile.book(sim, 0, 11, GiB)
    simfile.book(sim, 0, 22, 2 * GiB)
    snap = SimGpuProbe(sim, pid_alive=lambda pid: pid == 22, clock=lambda: 0.0).read()
    assert snap.gpu(0).used_bytes == 2 * GiB
    assert [p.pid for p in snap.gpu(0).processes] == [22]


def test_used_bytes_capped_at_total(sim):
    simfile.book(sim, 1, 11, 6 * GiB)
    simfile.book(sim, 1, 22, 6 * GiB)
    g1 = SimGpuProbe(sim, pid_alive=lambda pid: True, clock=lambda: 0.0).read().gpu(1)
    assert g1.used_bytes == 8 * GiB
    assert g1.free_bytes == 0
    assert sum(p.used_bytes for p in g1.processes) == 12 * GiB


def test_gpus_sorted_with_names_uuids_and_passthrough(sim):
    snap = SimGpuProbe(sim, clock=lambda: 0.0).read()
    assert [g.index for g in snap.gpus] == [0, 1]
    g0, g1 = snap.gpus
    assert (g0.name, g0.uuid, g0.temperature_c, g0.utilization_percent) == ("Sim GPU 0", "SIM-0", None, None)
    assert (g1.name, g1.uuid, g1.temperature_c, g1.utilization_percent) == ("Sim B", "SIM-1", 71.5, 33)
    assert g1.total_bytes == 8 * GiB
    assert g0.processes == ()


def test_file_edits_show_on_the_next_read(sim):
    probe = SimGpuProbe(sim, pid_alive=lambda pid: True, clock=lambda: 0.0)
    assert probe.read().gpu(1).temperature_c == 71.5
    with simfile.edit(sim) as data:
        data["gpus"][0]["temperature_c"] = 90
    simfile.book(sim, 1, 5, GiB)
    g1 = probe.read().gpu(1)
    assert (g1.temperature_c, g1.used_bytes) == (90, GiB)


def test_missing_file_raises_sim_file_error(tmp_path):
    with pytest.raises(SimFileError, match="does not exist"):
        SimGpuProbe(tmp_path / "absent.json").read()
