from types import SimpleNamespace

import pytest

from memwarden.probes.host import HostProbe
from memwarden.snapshots import HostSnapshot, Pressure

GiB = 1024**3
PSI = (
    "some avg10=12.34 avg60=5.00 avg300=1.00 total=999\n"
    "full avg10=3.21 avg60=1.00 avg300=0.50 total=111\n"
)


def probe(proc_root, total=16 * GiB, available=4 * GiB, swap_total=2 * GiB, swap_used=GiB / 2, now=1234.5):
    return HostProbe(
        proc_root=proc_root,
        virtual_memory=lambda: SimpleNamespace(total=total, available=available, used=123, percent=75.0),
        swap_memory=lambda: SimpleNamespace(total=swap_total, used=swap_used, free=0, percent=25.0),
        clock=lambda: now,
    )


@pytest.fixture
def proc_root(tmp_path):
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text(PSI)
    return tmp_path


def test_reads_memory_swap_and_pressure(proc_root):
    snap = probe(proc_root).read()
    assert snap == HostSnapshot(
        taken_at=1234.5, mem_total=16 * GiB, mem_available=4 * GiB, swap_total=2 * GiB, swap_used=GiB // 2,
        pressure=Pressure(12.34, 5.0, 999, 3.21, 1.0, 111), pressure_error=None)
    assert isinstance(snap.swap_used, int)
    assert snap.ram_used_percent == 75.0


def test_no_psi_gives_none_with_reason(tmp_path):
    snap = probe(tmp_path).read()
    assert snap.pressure is None
    assert snap.pressure_error is not None
    assert str(tmp_path / "pressure" / "memory") in snap.pressure_error
    assert "does not exist" in snap.pressure_error
    assert snap.mem_total == 16 * GiB  # the rest of the sample is still taken


def test_psi_disabled_gives_none_with_reason(tmp_path):
    (tmp_path / "pressure" / "memory").mkdir(parents=True)
    snap = probe(tmp_path).read()
    assert snap.pressure is None
    assert "Is a directory" in snap.pressure_error


def test_no_swap(proc_root):
    snap = probe(proc_root, swap_total=0, swap_used=0).read()
    assert (snap.swap_total, snap.swap_used, snap.swap_used_percent) == (0, 0, 0.0)


def test_pressure_file_is_reread_each_sample(proc_root):
    p = probe(proc_root)
    assert p.read().pressure.some_avg10 == 12.34
    (proc_root / "pressure" / "memory").write_text(PSI.replace("12.34", "50.00"))
    assert p.read().pressure.some_avg10 == 50.0


def test_defaults_read_the_real_machine():
    snap = HostProbe().read()
    assert snap.mem_total > 0
    assert 0 <= snap.mem_available <= snap.mem_total
    assert (snap.pressure is None) == (snap.pressure_error is not None)
