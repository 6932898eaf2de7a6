import dataclasses
from pathlib import Path

import pytest

from memwarden.config import schema
from memwarden.learning.jobspec import Hyper


def test_sections_match_config_fields():
    config_sections = {f.name: f.type for f in dataclasses.fields(schema.Config) if f.name not in ("source", "given")}
    assert set(config_sections) == set(schema.SECTIONS)
    for name, section_type in schema.SECTIONS.items():
        assert isinstance(getattr(schema.Config(), name), section_type)


@pytest.mark.parametrize("section", list(schema.SECTIONS.values()), ids=list(schema.SECTIONS))
def test_every_setting_has_a_parser_and_a_doc(section):
    settings = schema.section_fields(section)
    assert settings, section
    assert {f.name for f in settings} == {f.name for f in dataclasses.fields(section)}
    for f in settings:
        assert callable(f.metadata["parse"]), f.name
        assert f.metadata["doc"].strip(), f.name


def test_section_fields_skips_fields_without_parser():
    assert schema.section_fields(schema.Config) == []


def test_number_parser_bounds_and_types():
    parse = schema.number(1, 100)
    assert parse(1) == 1.0
    assert parse(100) == 100.0
    assert isinstance(parse(50), float)
    for bad in (0.99, 100.01, "5", None, True):
        with pytest.raises(ValueError):
            parse(bad)


def test_number_parser_without_bounds():
    assert schema.number()(-1e9) == -1e9


def test_integer_parser():
    parse = schema.integer(0, 3)
    assert parse(0) == 0
    assert parse(3) == 3
    for bad in (-1, 4, 1.0, "1", True):
        with pytest.raises(ValueError):
            parse(bad)


def test_duration_parser_lower_bound():
    parse = schema.duration(1)
    assert parse("1s") == 1.0
    assert parse(5) == 5.0
    with pytest.raises(ValueError, match="must be at least 1s, got '999ms'"):
        parse("999ms")


def test_choice_parser():
    parse = schema.choice("a", "b")
    assert parse("b") == "b"
    with pytest.raises(ValueError, match="expected one of 'a', 'b', got 'c'"):
        parse("c")


def test_optional_path_parser():
    assert schema.optional_path("") is None
    assert schema.optional_path("/a/b") == Path("/a/b")
    with pytest.raises(ValueError, match="absolute"):
        schema.optional_path("a/b")


@pytest.mark.parametrize("url", ["", "http://127.0.0.1:8080/x", "https://example.invalid/hook?x=1"])
def test_http_url_parser_accepts(url):
    assert schema.http_url(url) == url


@pytest.mark.parametrize("url", ["example.invalid", "ftp://example.invalid", "http:///path", "https:"])
def test_http_url_parser_rejects(url):
    with pytest.raises(ValueError, match="http:// or https://"):
        schema.http_url(url)


def test_group_name_parser():
    assert schema.group_name("") == ""
    assert schema.group_name("root") == "root"
    with pytest.raises(ValueError, match="no such group 'no-such-group-memwarden-test' on this machine"):
        schema.group_name("no-such-group-memwarden-test")


def test_target_modules_parser_and_its_default_are_the_job_specs():
    assert schema.identifiers(["q_proj", "v_proj", "W_pack"]) == ("q_proj", "v_proj", "W_pack")
    for bad in ([], ["q proj"], ["q_proj", ""], [None], "q_proj"):
        with pytest.raises(ValueError, match="expected"):
            schema.identifiers(bad)
    assert schema.LearningConfig().target_modules == Hyper().target_modules
