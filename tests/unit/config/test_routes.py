"""[[learning.routes]] is checked once, when the config is read: every bad name is refused at its key path."""

import pytest

from memwarden.config import ConfigError, parse_config
from memwarden.config.routes import Route
from memwarden.learning.store import adapter_for

ENV = {"STATE_DIRECTORY": "/var/lib/memwarden", "RUNTIME_DIRECTORY": "/run/memwarden"}


def parse_routes(routes):
    return parse_config({"learning": {"routes": routes}}, env=ENV, uid=1000).learning.routes


def problems(routes) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_routes(routes)
    return info.value.problems


def test_good_routes_become_typed_routes():
    routes = parse_routes([{"adapter": "dreams", "kinds": ["dream"]},
                           {"adapter": "alice-work", "profiles": ["alice"], "kinds": []}])
    assert routes == (Route("dreams", (), ("dream",)), Route("alice-work", ("alice",), ()))
    assert routes[1].adapter == "alice-work" and routes[0].kinds == ("dream",)


def test_an_adapter_with_the_profile_qualifier_is_refused_at_its_path():
    (problem,) = problems([{"adapter": "team@x"}])
    assert problem.startswith("at 'learning.routes[0].adapter': ")
    assert "'team@x'" in problem and "no '@'" in problem


@pytest.mark.parametrize(("route", "path"), [
    ({"adapter": ""}, "[0].adapter"),
    ({"adapter": 7}, "[0].adapter"),
    ({"adapter": "-x"}, "[0].adapter"),
    ({"adapter": "x" * 65}, "[0].adapter"),
    ({"profiles": ["alice"]}, "[0].adapter"),
    ({"adapter": "a", "profiles": ["ok", "has space"]}, "[0].profiles[1]"),
    ({"adapter": "a", "profiles": "alice"}, "[0].profiles"),
    ({"adapter": "a", "kinds": ["dream", ""]}, "[0].kinds[1]"),
    ({"adapter": "a", "kinds": ["k" * 65]}, "[0].kinds[0]"),
    ({"adapter": "a", "kinds": ["tab\there"]}, "[0].kinds[0]"),
    ({"adapter": "a", "weight": 2}, "[0].weight"),
])
def test_each_bad_part_of_a_route_is_named(route, path):
    assert [p.split("': ")[0] for p in problems([route])] == [f"at 'learning.routes{path}"]


def test_every_problem_of_every_route_is_reported_at_once():
    found = problems([{"adapter": "ok"}, "not a table", {"adapter": "a@b", "profiles": ["x y"]}])
    assert [p.split("': ")[0] for p in found] == [
        "at 'learning.routes[1]", "at 'learning.routes[2].adapter", "at 'learning.routes[2].profiles[0]"]


def test_a_long_bad_value_is_shown_shortened():
    (problem,) = problems([{"adapter": "@" * 10_000}])
    assert len(problem) < 300


def test_the_store_routes_whatever_the_schema_accepts():
    routes = parse_routes([{"adapter": "x", "profiles": ["alice"]}, {"adapter": "x", "profiles": ["bob"]}])
    assert adapter_for("alice", "journal", routes) == "x@alice"
    assert adapter_for("carol", "journal", routes) == "carol"
