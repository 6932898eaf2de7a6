"""A memory record's validation: every bad field named at once, with the line it came from."""

from __future__ import annotations

import pytest

from memwarden.learning.records import MAX_TEXT, BadRecord, parse_line, validate_record

from .conftest import line, rec


def test_a_good_record_is_normalised(clock):
    clean = validate_record(rec(response="", created_at="2026-01-02T03:04:05"), 1)
    assert clean["response"] is None  # "" is no response
    assert clean["created_at"] == 1767323045.0  # naive ISO 8601 is UTC
    assert clean["importance"] == 5
    assert validate_record(rec(importance=7.0, created_at=12.5))["importance"] == 7
    assert validate_record(rec(), now=42.0)["created_at"] == 42.0


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"importance": 11}, "importance", "importance must be a whole number 1–10, got 11"),
    ({"importance": 0}, "importance", "1–10"),
    ({"importance": 2.5}, "importance", "got 2.5"),
    ({"importance": True}, "importance", "got true"),
    ({"importance": "5"}, "importance", "importance must be"),
    ({"profile": "a b"}, "profile", "profile must be 1–64 letters"),
    ({"profile": "x@y"}, "profile", "profile must be"),
    ({"kind": ""}, "kind", "kind must be a non-empty string"),
    ({"kind": 3}, "kind", "kind must be"),
    ({"content": "   "}, "content", "content must be a non-empty string"),
    ({"response": 5}, "response", "response must be a string or null"),
    ({"created_at": "yesterday"}, "created_at", "created_at must be seconds since 1970 or an ISO 8601"),
    ({"created_at": -5}, "created_at", "created_at must be"),
    ({"importnace": 5}, "importnace", "unknown field 'importnace'"),
])
def test_each_bad_field_is_named(change, field, words):
    with pytest.raises(BadRecord) as info:
        validate_record(rec(**change), 12)
    assert field in str(info.value) and words in str(info.value)
    assert str(info.value).startswith("line 12: ")


def test_every_problem_of_a_record_is_reported_at_once():
    with pytest.raises(BadRecord) as info:
        validate_record({"kind": "dream", "importance": 99, "extra": 1}, 3)
    problems = info.value.problems
    assert any("unknown field 'extra'" in p for p in problems)
    assert "profile is missing" in problems and "content is missing" in problems
    assert any(p.startswith("importance must be") for p in problems)


def test_content_too_long_is_refused():
    with pytest.raises(BadRecord, match="content is longer than 200,000 characters"):
        validate_record(rec(content="x" * (MAX_TEXT + 1)))


def test_parse_line_cases():
    assert parse_line("   \n", 4) is None
    assert parse_line(line().encode(), 1)["profile"] == "alice"
    with pytest.raises(BadRecord, match=r"line 2: not valid JSON: .* at column 2"):
        parse_line("{oops", 2)
    with pytest.raises(BadRecord, match="line 3: expected a JSON object, got list"):
        parse_line("[1, 2]", 3)
    with pytest.raises(BadRecord, match="line 4: not valid UTF-8"):
        parse_line(b'{"content": "\xff"}', 4)
    with pytest.raises(BadRecord, match="line 5: line not sent"):
        parse_line(None, 5)


