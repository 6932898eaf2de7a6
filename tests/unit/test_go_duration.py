import math

import pytest

from memwarden.units import FOREVER, parse_go_duration, parse_keep_alive


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("10m", 600.0),
        ("1h2m3s", 3723.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("2us", 2e-6),
        ("2µs", 2e-6),
        ("2μs", 2e-6),
        ("7ns", 7e-9),
        ("1m1ms", 60.001),
        ("+5s", 5.0),
        ("-1m", -60.0),
        ("-1h30m", -5400.0),
        ("0s", 0.0),
    ],
)
def test_parse_go_duration(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "-", "+", "10", "1d", "1w", "h", "1.5", "1 h", "1h 30m", "5x", "s5", "1hh", ".s", "--5s", "+-5s",
     "1e3s", "abc"],
)
def test_parse_go_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


def test_parse_go_duration_error_quotes_the_input():
    with pytest.raises(ValueError) as err:
        parse_go_duration("5 parsecs")
    assert "'5 parsecs'" in str(err.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (300, 300.0),
        (2.5, 2.5),
        ("5m", 300.0),
        ("0", 0.0),
        ("1h", 3600.0),
        (-1, FOREVER),
        (-0.5, FOREVER),
        ("-1m", FOREVER),
        ("-1ns", FOREVER),
    ],
)
def test_parse_keep_alive(value, seconds):
    assert parse_keep_alive(value) == seconds


def test_negative_keep_alive_is_forever():
    assert math.isinf(parse_keep_alive(-1)) and parse_keep_alive(-1) > 0


@pytest.mark.parametrize("value", [True, False, None, [], {}, b"5m", object()])
def test_parse_keep_alive_rejects_types(value):
    with pytest.raises(ValueError, match="keep_alive must be a number of seconds or a duration string"):
        parse_keep_alive(value)


@pytest.mark.parametrize("value", ["300", "forever", "5 m", "1d", ""])
def test_parse_keep_alive_rejects_strings_go_rejects(value):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_keep_alive(value)
