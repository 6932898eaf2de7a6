import pytest

from memwarden.probes.pressure import PressureUnavailable, parse_pressure, read_pressure
from memwarden.snapshots import Pressure

PSI = (
    "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\n"
    "full avg10=0.50 avg60=0.25 avg300=0.05 total=6543\n"
)


def test_parse_pressure():
    assert parse_pressure(PSI) == Pressure(
        some_avg10=1.5, some_avg60=0.75, some_total_us=123456,
        full_avg10=0.5, full_avg60=0.25, full_total_us=6543)


def test_parse_pressure_without_full_line_treats_full_as_zero():
    p = parse_pressure(PSI.splitlines()[0] + "\n\n")
    assert (p.some_avg10, p.full_avg10, p.full_avg60, p.full_total_us) == (1.5, 0.0, 0.0, 0)


def test_parse_pressure_without_some_line_fails():
    with pytest.raises(ValueError, match="no 'some' line"):
        parse_pressure(PSI.splitlines()[1])


@pytest.mark.parametrize("text", ["some avg10=x avg60=0 total=0", "some avg10 avg60=0 total=0"])
def test_parse_pressure_garbage_is_value_error(text):
    with pytest.raises(ValueError):
        parse_pressure(text)


def test_read_pressure(tmp_path):
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text(PSI)
    assert read_pressure(tmp_path).some_total_us == 123456


def test_read_pressure_missing_file(tmp_path):
    with pytest.raises(PressureUnavailable, match="does not exist"):
        read_pressure(tmp_path)


def test_read_pressure_unreadable(tmp_path):
    (tmp_path / "pressure" / "memory").mkdir(parents=True)  # a directory: EISDIR, like EOPNOTSUPP with psi=0
    with pytest.raises(PressureUnavailable, match="Is a directory"):
        read_pressure(tmp_path)
