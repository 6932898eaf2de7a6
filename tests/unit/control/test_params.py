import pytest

from memwarden.control.params import bool_param, duration_param, int_param, size_param, str_param
from memwarden.control.protocol import INVALID_PARAMS, InvalidParams

GiB = 1024**3


def test_size_param_parses_sizes():
    assert size_param("size", "4GiB") == 4 * GiB
    assert size_param("size", 1024**2) == 1024**2  # a JSON client sends bytes
    assert size_param("size", "4B") == 4  # a unit is a choice, however small


@pytest.mark.parametrize("value", [4, "4", 1024, 2.5, 1024**2 - 1])
def test_size_param_refuses_a_bare_number_under_a_mib_as_a_missing_unit(value):
    with pytest.raises(InvalidParams) as err:
        size_param("size", value)
    assert "has no unit and is under 1 MiB: did you mean" in err.value.message
    assert err.value.message.startswith("invalid params: 'size': ")


@pytest.mark.parametrize("value", ["lots", "4 parsecs", True, None, [], -5, float("inf")])
def test_size_param_invalid_names_the_param(value):
    with pytest.raises(InvalidParams) as err:
        size_param("vram", value)
    assert err.value.code == INVALID_PARAMS
    assert err.value.message.startswith("invalid params: 'vram': ")


@pytest.mark.parametrize("value", [0, "0", "0GiB", "0.1B"])
def test_size_param_rejects_zero_bytes(value):
    with pytest.raises(InvalidParams, match="'vram' must be more than 0 bytes"):
        size_param("vram", value)


def test_duration_param():
    assert duration_param("timeout", "1h30m") == 5400.0
    assert duration_param("timeout", 2) == 2.0
    for bad in ("soon", -1, True, None):
        with pytest.raises(InvalidParams, match="invalid params: 'timeout': ") as err:
            duration_param("timeout", bad)
        assert err.value.code == INVALID_PARAMS


def test_int_param_range_inclusive():
    assert int_param("priority", 0, 0, 100) == 0
    assert int_param("priority", 100, 0, 100) == 100


@pytest.mark.parametrize("value", [-1, 101, True, 5.0, "5", None])
def test_int_param_rejects_with_range_and_value(value):
    with pytest.raises(InvalidParams) as err:
        int_param("priority", value, 0, 100)
    assert err.value.message == f"invalid params: 'priority' must be a whole number from 0 to 100, got {value!r}"


def test_int_param_optional_none():
    assert int_param("gpu", None, 0, 7, optional=True) is None
    assert int_param("gpu", 3, 0, 7, optional=True) == 3
    with pytest.raises(InvalidParams, match="'gpu'"):
        int_param("gpu", 8, 0, 7, optional=True)


def test_str_param():
    assert str_param("holder", "trainer") == "trainer"
    assert str_param("holder", "x" * 256) == "x" * 256
    for bad in ("", "x" * 257, None, 5):
        with pytest.raises(InvalidParams, match="'holder' must be a non-empty string of at most 256 characters"):
            str_param("holder", bad)
    with pytest.raises(InvalidParams, match="at most 3 characters"):
        str_param("holder", "abcd", max_len=3)


def test_bool_param():
    assert bool_param("preemptible", True) is True
    assert bool_param("preemptible", False) is False
    for bad in (1, 0, "true", None):
        with pytest.raises(InvalidParams) as err:
            bool_param("preemptible", bad)
        assert err.value.message == f"invalid params: 'preemptible' must be true or false, got {bad!r}"
