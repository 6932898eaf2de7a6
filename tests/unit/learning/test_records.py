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




# ---- cues, titles, tags and preferences ------------------------------------------------------------------

def test_cue_title_and_tags_are_kept_clean():
    clean = validate_record(rec(cue=" my godson Zeno ", title="Zeno", tags=["family", " Zeno", "FAMILY"]))
    assert (clean["cue"], clean["title"], clean["tags"]) == ("my godson Zeno", "Zeno", ["family", "Zeno"])
    bare = validate_record(rec())
    assert (bare["cue"], bare["title"], bare["tags"], bare["prompt"], bare["chosen"]) == (None,) * 5
    assert validate_record(rec(tags=[]))["tags"] is None


@pytest.mark.parametrize(("change", "words"), [
    ({"cue": ""}, "cue must be a non-empty line of at most 200 printable characters, got ''"),
    ({"cue": 7}, "cue must be a non-empty line"),
    ({"cue": "two\nlines"}, "cue must be"),
    ({"title": "x" * 201}, "title must be a non-empty line of at most 200"),
    ({"tags": "family"}, "tags must be a list of at most 16 strings, got 'family'"),
    ({"tags": ["a"] * 17}, "tags must be a list of at most 16"),
    ({"tags": ["ok", 3]}, "tags[1] must be a non-empty line of at most 64"),
])
def test_a_bad_cue_title_or_tag_is_named(change, words):
    with pytest.raises(BadRecord) as info:
        validate_record(rec(**change), 9)
    assert words in str(info.value) and str(info.value).startswith("line 9: ")


def pref(**kw):
    return rec(**{"kind": "preference", "content": None, "prompt": "Tea or coffee?", "chosen": "Tea, green.",
                  "rejected": "Coffee.", **kw})


def test_a_preference_keeps_its_prompt_and_replies_and_its_content_defaults_to_the_prompt():
    clean = validate_record({k: v for k, v in pref().items() if v is not None})
    assert (clean["prompt"], clean["chosen"], clean["rejected"]) == ("Tea or coffee?", "Tea, green.", "Coffee.")
    assert clean["content"] == "Tea or coffee?" and clean["response"] is None
    assert validate_record(pref(content="asked at breakfast"))["content"] == "asked at breakfast"


@pytest.mark.parametrize(("change", "words"), [
    ({"rejected": None}, "rejected is missing (a preference carries prompt, chosen, rejected)"),
    ({"chosen": None, "prompt": None}, "prompt is missing"),
    ({"chosen": 3}, "chosen must be a non-empty string, got 3"),
    ({"rejected": " "}, "rejected must be a non-empty string"),
    ({"rejected": " tea,  GREEN. "}, "chosen and rejected are the same text: nothing to prefer"),
    ({"response": "Tea."}, "a preference has no response: its answer is chosen"),
    ({"chosen": "x" * (MAX_TEXT + 1)}, "chosen is longer than 200,000 characters"),
])
def test_a_bad_preference_is_named(change, words):
    record = {k: v for k, v in {**pref(), **change}.items() if v is not None}
    with pytest.raises(BadRecord) as info:
        validate_record(record, 4)
    assert words in str(info.value) and str(info.value).startswith("line 4: ")


def test_preference_fields_belong_to_preferences_only():
    with pytest.raises(BadRecord, match="chosen, rejected are for kind 'preference' only"):
        validate_record(rec(chosen="a", rejected="b"))
    with pytest.raises(BadRecord, match="content is missing"):
        validate_record({k: v for k, v in rec(content=None).items() if v is not None})
