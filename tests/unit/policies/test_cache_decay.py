"""gdsf-decay: uses that halve every HALF_LIFE_REQUESTS requests, and the measured load time as cost."""

from memwarden.policies import cache
from memwarden.policies.cache import (
    CacheState,
    eviction_order,
    note_load_time,
    plan_room,
    set_pinned,
    set_resident,
    touch,
)

GB = 10**9
POLICY = "gdsf-decay"


def used(state: CacheState, name: str, times: int, size: int = 2 * GB) -> CacheState:
    for _ in range(times):
        state = touch(state, name, float(state.ticks), size)
    return state


def load(state: CacheState, name: str, size: int = 2 * GB) -> CacheState:
    return set_resident(state, name, True, size, measured=True)


def test_yesterdays_favourite_becomes_the_victim_once_demand_moves():
    state = load(used(CacheState(), "old", 500), "old")
    state = used(state, "elsewhere", int(10 * cache.HALF_LIFE_REQUESTS))  # ten half-lives of other demand
    state = load(used(state, "new", 50), "new")
    # GDSF never forgets the 500 uses; decayed, they count less than 50 recent ones.
    assert [e.name for e in eviction_order(state, "gdsf")] == ["new", "old"]
    assert [e.name for e in eviction_order(state, POLICY)] == ["old", "new"]
    assert plan_room(state, "x", 2 * GB, 4 * GB, POLICY).victims == ("old",)


def test_decay_counts_requests_to_any_model():
    state = used(CacheState(), "a", 4)
    before = cache.decayed_uses(state.entries["a"], state.ticks)
    state = used(state, "b", int(cache.HALF_LIFE_REQUESTS))
    assert 3.9 < before <= 4.0  # the earlier of the four have decayed a little already
    assert abs(cache.decayed_uses(state.entries["a"], state.ticks) - before / 2) < 1e-9


def test_a_measured_slow_load_keeps_a_model_over_an_equal_one():
    state = load(used(CacheState(), "a", 3), "a")
    state = load(used(state, "b", 3), "b")
    state = used(state, "a", 0)
    # Same size, same uses, "b" more recent: by the size estimate "a" goes first.
    assert eviction_order(state, POLICY)[0].name == "a"
    slow = note_load_time(state, "a", 30.0)  # "a" is measured to take 30 s to load (a slow disk)
    assert eviction_order(slow, POLICY)[0].name == "b"
    assert plan_room(slow, "c", 2 * GB, 4 * GB, POLICY).victims == ("b",)


def test_load_time_is_estimated_from_size_until_measured_then_averaged():
    state = used(CacheState(), "a", 1, 4 * GB)
    assert cache.load_time(state.entries["a"]) == 1.0 + 4 * GB / 2e9
    state = note_load_time(state, "a", 10.0)
    assert cache.load_time(state.entries["a"]) == 10.0
    state = note_load_time(state, "a", 20.0)
    assert cache.load_time(state.entries["a"]) == 15.0
    assert note_load_time(state, "a", 0.0) is state  # nothing measured
    assert note_load_time(state, "unknown", 5.0) is state


def test_pinned_models_are_never_victims():
    state = load(used(CacheState(), "a", 1), "a")
    state = load(used(state, "b", 500), "b")
    state = set_pinned(state, "a", True)
    assert [e.name for e in eviction_order(state, POLICY)] == ["b"]
    plan = plan_room(state, "c", 3 * GB, 4 * GB, POLICY)
    assert plan.victims == ("b",) and not plan.fits


def test_eviction_raises_the_inflation_to_the_victims_priority():
    state = load(used(CacheState(), "a", 2), "a")
    expected = cache.decay_priority(state, state.entries["a"])
    after = cache.evicted(state, "a", POLICY)
    assert after.inflation == expected > 0
    assert not after.entries["a"].resident
    later = touch(after, "b", 1.0, GB)
    assert later.entries["b"].inflation_at_use == expected


def test_commit_keeps_the_request_count():
    base = used(CacheState(), "a", 3)
    current = used(base, "b", 2)
    planned = used(base, "a", 1)
    assert cache.commit(current, base, planned).ticks == current.ticks
