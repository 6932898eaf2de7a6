import dataclasses

import pytest

from memwarden.snapshots import HostSnapshot, Pressure


def test_percentages():
    s = HostSnapshot(taken_at=1.0, mem_total=1000, mem_available=250, swap_total=400, swap_used=100,
                     pressure=None)
    assert s.ram_used_percent == 75.0
    assert s.swap_used_percent == 25.0


def test_zero_totals_give_zero_percent():
    s = HostSnapshot(taken_at=1.0, mem_total=0, mem_available=0, swap_total=0, swap_used=0, pressure=None)
    assert s.ram_used_percent == 0.0
    assert s.swap_used_percent == 0.0


def test_to_dict_has_derived_fields_and_nested_pressure():
    p = Pressure(1.5, 0.5, 10, 0.25, 0.125, 5)
    s = HostSnapshot(taken_at=2.0, mem_total=3000, mem_available=1000, swap_total=0, swap_used=0, pressure=p,
                     pressure_error=None)
    d = s.to_dict()
    assert d["ram_used_percent"] == 66.67
    assert d["ram_available_percent"] == 33.33
    assert d["swap_used_percent"] == 0.0
    assert d["pressure"] == {"some_avg10": 1.5, "some_avg60": 0.5, "some_total_us": 10,
                             "full_avg10": 0.25, "full_avg60": 0.125, "full_total_us": 5}
    assert d["pressure_error"] is None
    assert d["mem_total"] == 3000


def test_snapshot_is_frozen():
    s = HostSnapshot(taken_at=1.0, mem_total=1, mem_available=1, swap_total=0, swap_used=0, pressure=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mem_total = 5  # type: ignore[misc]
