"""Routing: the first matching route names the adapter, and no adapter ever mixes profiles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwarden.config.routes import Route
from memwarden.learning.routing import adapter_for

ROUTES = (
    Route("alice-dreams", ("alice",), ("dream",)),  # owned by alice
    Route("dreams", (), ("dream",)),  # any profile: qualified
    Route("shared", ("bob", "carol"), ()),  # two profiles: qualified
    Route("dave", ("erin",), ()),  # owned by erin, named like another profile
)


@pytest.mark.parametrize(("profile", "kind", "adapter"), [
    ("alice", "dream", "alice-dreams"),  # first match wins
    ("alice", "journal", "alice"),  # unrouted: the profile's own
    ("zed", "dream", "dreams@zed"),
    ("bob", "dream", "dreams@bob"),
    ("bob", "journal", "shared@bob"),
    ("carol", "reflection", "shared@carol"),
    ("erin", "journal", "dave"),
    ("dave", "journal", "dave@dave"),  # would have shared erin's adapter
])
def test_routing(profile, kind, adapter):
    assert adapter_for(profile, kind, ROUTES) == adapter


def test_two_routes_naming_one_adapter_for_two_profiles_are_qualified():
    routes = (Route("x", ("alice",), ("dream",)), Route("x", ("bob",), ()))
    assert adapter_for("alice", "dream", routes) == "x@alice"
    assert adapter_for("bob", "dream", routes) == "x@bob"


names = st.sampled_from(["alice", "bob", "carol", "dreams", "x", "alice-dreams"])


@settings(max_examples=300, deadline=None)
@given(routes=st.lists(st.tuples(names, st.lists(names, max_size=3).map(tuple),
                                 st.lists(st.sampled_from(["dream", "journal"]), max_size=2).map(tuple)),
                       max_size=5),
       memories=st.lists(st.tuples(names, st.sampled_from(["dream", "journal", "reflection"])), max_size=30))
def test_no_adapter_ever_mixes_profiles(routes, memories):
    owner: dict[str, str] = {}
    for profile, kind in memories:
        adapter = adapter_for(profile, kind, routes)
        assert owner.setdefault(adapter, profile) == profile
