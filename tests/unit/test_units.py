import pytest

from memwarden.units import format_duration, format_size, parse_duration, parse_memory_size, parse_size

# ---- parse_size ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("1.5GB", 1_500_000_000),
        ("1KiB", 1024),
        ("1kb", 1000),
        ("2k", 2000),
        ("3TiB", 3 * 1024**4),
        ("1T", 1000**4),
        ("1048576", 1048576),
        ("100B", 100),
        ("  8 GiB  ", 8 * 1024**3),
        ("4gib", 4 * 1024**3),
        ("0", 0),
    ],
)
def test_parse_size_strings(text, expected):
    assert parse_size(text) == expected


def test_parse_size_fraction_of_binary_unit_truncates_to_whole_bytes():
    assert parse_size("0.5KiB") == 512
    assert parse_size("1.5MiB") == 1536 * 1024


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (1024, 1024), (2**40, 2**40), (1.9, 1)])
def test_parse_size_numbers_are_bytes(value, expected):
    assert parse_size(value) == expected
    assert isinstance(parse_size(value), int)


@pytest.mark.parametrize("text", ["", "GiB", "4XB", "4 Gi B", "-1GiB", "1e3", "four GiB", "4GiB4", "0x10"])
def test_parse_size_rejects_bad_strings(text):
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_parse_size_rejects_negative_numbers(value):
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_rejects_booleans(value):
    with pytest.raises(ValueError, match="boolean"):
        parse_size(value)


@pytest.mark.parametrize("value", [None, [1], {"a": 1}])
def test_parse_size_rejects_other_types(value):
    with pytest.raises(ValueError, match=type(value).__name__):
        parse_size(value)


# ---- parse_duration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        ("1h1m1s", 3661.0),
        ("10", 10.0),
        ("2.5", 2.5),
        (" 30S ", 30.0),
        ("1m500ms", 60.5),
    ],
)
def test_parse_duration_strings(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(("value", "expected"), [(0, 0.0), (30, 30.0), (0.25, 0.25)])
def test_parse_duration_numbers_are_seconds(value, expected):
    result = parse_duration(value)
    assert result == expected
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "text", ["", "   ", "s", "30x", "30 s", "h1", "1h 30m", "-5s", "1h30", "ms", "1.s", "abc"])
def test_parse_duration_rejects_bad_strings(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_parse_duration_rejects_negative_number():
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(-1)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_booleans(value):
    with pytest.raises(ValueError, match="boolean"):
        parse_duration(value)


def test_parse_duration_rejects_other_types():
    with pytest.raises(ValueError, match="NoneType"):
        parse_duration(None)


# ---- format_size / format_duration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nbytes", "expected"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (512 * 1024**2, "512.0 MiB"),
        (4 * 1024**3, "4.0 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (2048 * 1024**4, "2048.0 TiB"),  # TiB is the largest unit
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_size(nbytes, expected):
    assert format_size(nbytes) == expected


def test_format_size_round_trips_through_parse_size():
    assert parse_size(format_size(4 * 1024**3).replace(" ", "")) == 4 * 1024**3


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "-"),
        (0, "0ms"),
        (0.25, "250ms"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (90, "1m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400 + 1, "1d1s"),
        (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d3h4m5s"),
        (59.6, "1m"),
    ],
)
def test_format_duration(seconds, expected):
    assert format_duration(seconds) == expected


@pytest.mark.parametrize("seconds", [0.25, 1, 90, 5400, 2 * 86400 + 3 * 3600 + 4 * 60 + 5])
def test_format_duration_round_trips_through_parse_duration(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


# ---- non-finite numbers (TOML allows `inf` and `nan`) ----------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_parse_size_rejects_non_finite_numbers_with_value_error(value):
    # The config loader turns ValueError into a "at 'host.reserve': ..." problem; anything else crashes it.
    with pytest.raises(ValueError):
        parse_size(value)


def test_parse_duration_rejects_nan():
    # NaN compares false with everything: a NaN hold would never let a level change.
    with pytest.raises(ValueError):
        parse_duration(float("nan"))


# ---- numbers too large for a float (found by the fault suite's fuzzers) --------------------------------------


@pytest.mark.parametrize("value", ["9" * 400, "9" * 309 + "TiB"])
def test_parse_size_of_an_overflowing_string_is_a_value_error(value):
    # int(inf) raised OverflowError, which escaped the config loader and the RPC params' ValueError handlers.
    with pytest.raises(ValueError, match="too large"):
        parse_size(value)


@pytest.mark.parametrize("value", [float("inf"), "9" * 400, "9" * 400 + "s"])
def test_parse_duration_rejects_infinity(value):
    # TOML's `inf` as daemon.sample_interval, JSON's Infinity as lease.acquire's wait: a pass or a wait that
    # never ends.
    with pytest.raises(ValueError):
        parse_duration(value)


# ---- parse_memory_size: a lease or a reserve ---------------------------------------------------------------


@pytest.mark.parametrize(("value", "hint"), [(4, "did you mean 4GiB?"), ("4", "did you mean 4GiB?"),
                                             (512, "did you mean 512MiB?"), ("0.5", "did you mean 0.5GiB?")])
def test_parse_memory_size_refuses_a_bare_number_under_a_mib(value, hint):
    with pytest.raises(ValueError, match="has no unit and is under 1 MiB") as err:
        parse_memory_size(value)
    assert hint in str(err.value)
    assert "GB = 10^9" in str(err.value)


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0), ("0", 0), (1024**2, 1024**2), ("2097152", 2 * 1024**2), ("4GB", 4 * 10**9), ("4GiB", 4 * 1024**3),
    ("4B", 4), ("64KiB", 64 * 1024)])
def test_parse_memory_size_keeps_units_bytes_from_a_mib_and_zero(value, expected):
    assert parse_memory_size(value) == expected
