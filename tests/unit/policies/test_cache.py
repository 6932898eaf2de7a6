import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwarden.policies.cache import (
    MAX_ENTRIES,
    CacheState,
    Entry,
    commit,
    evicted,
    eviction_order,
    plan_room,
    prune,
    set_pinned,
    set_resident,
    touch,
)

GiB = 1024**3


def resident_state(*entries: tuple[str, int, float], policy_touches: int = 1) -> CacheState:
    """Resident models (name, size, last_used), each touched `policy_touches` times at last_used."""
    state = CacheState()
    for name, size, when in entries:
        for _ in range(policy_touches):
            state = touch(state, name, when, size)
        state = set_resident(state, name, True, size, measured=True)
    return state


def names(entries: list[Entry]) -> list[str]:
    return [e.name for e in entries]


# ---- touch and the frozen state ------------------------------------------------------------------------


def test_touch_counts_hits_and_records_time_without_changing_the_old_state():
    before = CacheState()
    after = touch(touch(before, "m", 10.0, 4 * GiB), "m", 20.0)
    assert before.entries == {}
    entry = after.entries["m"]
    assert (entry.hits, entry.last_used, entry.size) == (2, 20.0, 4 * GiB)
    with pytest.raises(TypeError):
        after.entries["x"] = entry  # type: ignore[index]


# ---- LRU --------------------------------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_first():
    state = resident_state(("a", GiB, 30.0), ("b", GiB, 10.0), ("c", GiB, 20.0))
    assert names(eviction_order(state, "lru")) == ["b", "c", "a"]
    state = touch(state, "b", 40.0)
    assert names(eviction_order(state, "lru")) == ["c", "a", "b"]


def test_eviction_order_skips_pinned_non_resident_and_excluded():
    state = resident_state(("a", GiB, 1.0), ("b", GiB, 2.0), ("c", GiB, 3.0), ("d", GiB, 4.0))
    state = set_pinned(state, "a", True)
    state = set_resident(state, "b", False)
    state = touch(state, "installed-only", 0.0, GiB)
    for policy in ("lru", "gdsf"):
        assert names(eviction_order(state, policy, exclude=["d"])) == ["c"]


def test_unknown_policy_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'fifo'"):
        eviction_order(CacheState(), "fifo")


# ---- GDSF -------------------------------------------------------------------------------------------------


def test_gdsf_small_model_outranks_a_big_one_used_as_often():
    state = CacheState()
    for t in range(3):
        state = touch(state, "small", 100.0 + t, 2 * GiB)
        state = touch(state, "big", 50.0 + t, 16 * GiB)
    state = touch(state, "big", 200.0)  # big is the most recently used: LRU would keep it
    state = set_resident(state, "small", True, 2 * GiB, measured=True)
    state = set_resident(state, "big", True, 16 * GiB, measured=True)
    state = touch(state, "small", 150.0)  # equal use: 4 hits each
    assert state.entries["small"].hits == state.entries["big"].hits == 4
    assert state.entries["small"].priority > state.entries["big"].priority
    assert names(eviction_order(state, "gdsf")) == ["big", "small"]
    assert names(eviction_order(state, "lru")) == ["small", "big"]


def test_gdsf_frequency_raises_priority():
    state = resident_state(("once", GiB, 1.0))
    state = touch(state, "often", 0.0, GiB)
    state = touch(state, "often", 0.5)
    state = set_resident(state, "often", True, GiB, measured=True)
    assert names(eviction_order(state, "gdsf")) == ["once", "often"]


def test_gdsf_inflation_rises_on_eviction_so_old_entries_age_out():
    state = CacheState()
    for _ in range(3):
        state = touch(state, "old", 1.0, GiB)  # popular long ago
    for _ in range(2):
        state = touch(state, "victim", 2.0, GiB)
    for name in ("old", "victim"):
        state = set_resident(state, name, True, GiB, measured=True)
    assert state.inflation == 0.0
    assert names(eviction_order(state, "gdsf")) == ["victim", "old"]
    victim_priority = state.entries["victim"].priority

    state = evicted(state, "victim", "gdsf")
    assert state.inflation == victim_priority
    assert state.entries["victim"].resident is False

    # A newcomer with fewer hits than "old" starts from the inflated L and now outranks it.
    state = touch(state, "new", 3.0, GiB)
    state = touch(state, "new", 3.0)
    state = set_resident(state, "new", True, GiB, measured=True)
    assert state.entries["new"].hits < state.entries["old"].hits
    assert state.entries["new"].priority == pytest.approx(victim_priority + 2 / GiB)
    assert names(eviction_order(state, "gdsf")) == ["old", "new"]


def test_inflation_never_falls_and_lru_eviction_leaves_it_alone():
    state = resident_state(("hi", GiB, 1.0), ("lo", 8 * GiB, 2.0), policy_touches=3)
    after_hi = evicted(state, "hi", "gdsf")
    after_lo = evicted(after_hi, "lo", "gdsf")
    assert after_lo.inflation == after_hi.inflation == state.entries["hi"].priority
    assert evicted(state, "hi", "lru").inflation == 0.0


def test_priority_reflects_the_size_learned_after_the_first_touch():
    """A model first requested before its size is known (touch without size) must not keep a priority
    computed as if it were 1 byte: once its size is known, a small model used more often ranks above it."""
    state = CacheState()
    for _ in range(10):
        state = touch(state, "small", 1.0, 1 * GiB)
    state = set_resident(state, "small", True, 1 * GiB, measured=True)
    state = touch(state, "newcomer", 2.0)  # not in the cache yet: size unknown
    state = set_resident(state, "newcomer", False, 8 * GiB)  # the estimate from /api/tags
    state = set_resident(state, "newcomer", True, 8 * GiB, measured=True)
    # 1 hit on 8 GiB vs 10 hits on 1 GiB: GDSF must evict the newcomer first.
    assert names(eviction_order(state, "gdsf")) == ["newcomer", "small"]


# ---- set_resident sizes -------------------------------------------------------------------------------------


def test_estimate_never_overwrites_a_measured_size():
    state = set_resident(CacheState(), "m", False, 5 * GiB)
    assert (state.entries["m"].size, state.entries["m"].size_measured) == (5 * GiB, False)
    state = set_resident(state, "m", True, 6 * GiB, measured=True, gpu=1)
    assert (state.entries["m"].size, state.entries["m"].size_measured, state.entries["m"].gpu) == (6 * GiB, True, 1)
    state = set_resident(state, "m", False, 5 * GiB)
    assert (state.entries["m"].size, state.entries["m"].size_measured) == (6 * GiB, True)
    assert state.entries["m"].gpu is None  # not resident: nowhere
    state = set_resident(state, "m", True, 7 * GiB, measured=True)
    assert (state.entries["m"].size, state.entries["m"].size_measured) == (7 * GiB, True)


def test_estimate_replaces_an_earlier_estimate_and_none_keeps_the_size():
    state = set_resident(CacheState(), "m", False, 5 * GiB)
    state = set_resident(state, "m", False, 4 * GiB)
    assert state.entries["m"].size == 4 * GiB
    state = set_resident(state, "m", True)
    assert (state.entries["m"].size, state.entries["m"].resident) == (4 * GiB, True)


def test_set_resident_keeps_hits_and_pin():
    state = set_pinned(touch(CacheState(), "m", 5.0, GiB), "m", True)
    state = set_resident(state, "m", True, 2 * GiB, measured=True)
    entry = state.entries["m"]
    assert (entry.hits, entry.pinned, entry.last_used) == (1, True, 5.0)


# ---- plan_room ------------------------------------------------------------------------------------------------


def test_plan_room_fits_without_victims_when_budget_allows():
    state = resident_state(("a", 4 * GiB, 1.0), ("b", 4 * GiB, 2.0))
    room = plan_room(state, "new", 8 * GiB, 16 * GiB, "lru")
    assert room.victims == ()
    assert room.fits is True
    assert room.used_after == 8 * GiB
    assert room.budget == 16 * GiB


def test_plan_room_evicts_in_policy_order_until_it_fits():
    state = resident_state(("a", 4 * GiB, 3.0), ("b", 4 * GiB, 1.0), ("c", 4 * GiB, 2.0))
    room = plan_room(state, "new", 6 * GiB, 13 * GiB, "lru")
    assert room.victims == ("b", "c")
    assert room.fits is True
    assert room.used_after == 4 * GiB


def test_plan_room_keeps_an_early_victim_whose_room_a_later_one_already_makes():
    # LRU takes "small" first, but 2 GiB is not enough; once "big" goes, "small" fits beside the new model.
    state = resident_state(("small", 2 * GiB, 1.0), ("big", 8 * GiB, 2.0), ("keep", 4 * GiB, 3.0))
    room = plan_room(state, "new", 8 * GiB, 14 * GiB, "lru")
    assert room.victims == ("big",)
    assert room.fits is True
    assert room.used_after == 6 * GiB


def test_plan_room_keeps_no_victim_the_resident_cap_needs_gone():
    state = resident_state(("small", 2 * GiB, 1.0), ("big", 8 * GiB, 2.0), ("keep", 4 * GiB, 3.0))
    room = plan_room(state, "new", 8 * GiB, 14 * GiB, "lru", max_resident=2)
    assert room.victims == ("small", "big")
    assert room.used_after == 4 * GiB


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 8), min_size=1, max_size=8), need=st.integers(1, 8),
       budget=st.integers(8, 24), cap=st.integers(0, 5))
def test_plan_room_evicts_no_model_it_could_keep(sizes, need, budget, cap):
    state = resident_state(*((f"m{i}", size * GiB, float(i)) for i, size in enumerate(sizes)))
    room = plan_room(state, "new", need * GiB, budget * GiB, "lru", max_resident=cap)
    staying = len(sizes) - len(room.victims)
    if room.fits:
        for victim in room.victims:
            kept_bytes = room.used_after + state.entries[victim].size + need * GiB
            assert kept_bytes > budget * GiB or 0 < cap < staying + 2, f"{victim} need not go"


def test_plan_room_does_not_count_or_evict_the_model_itself():
    state = resident_state(("self", 6 * GiB, 0.0), ("other", 4 * GiB, 1.0))
    room = plan_room(state, "self", 6 * GiB, 10 * GiB, "lru")
    assert room.victims == ()
    assert room.fits is True
    assert room.used_after == 4 * GiB


def test_plan_room_pinned_models_can_make_it_not_fit():
    state = resident_state(("pinned", 10 * GiB, 0.0), ("free", 2 * GiB, 1.0))
    state = set_pinned(state, "pinned", True)
    room = plan_room(state, "new", 8 * GiB, 16 * GiB, "lru")
    assert room.victims == ("free",)
    assert room.fits is False
    assert room.used_after == 10 * GiB
    assert room.budget - room.used_after < 8 * GiB


# ---- prune: the bounded table ------------------------------------------------------------------------------


def used_at(*entries: tuple[str, float]) -> CacheState:
    """Non-resident, unpinned models (name, last_used)."""
    return CacheState.of(Entry(name, GiB, last_used=when) for name, when in entries)


def test_prune_forgets_the_least_recently_used_beyond_the_bound():
    state = used_at(("old", 1.0), ("older", 0.5), ("new", 3.0), ("mid", 2.0))
    pruned = prune(state, None, max_entries=2)
    assert pruned.forgotten == ("older", "old")
    assert set(pruned.state.entries) == {"new", "mid"}
    assert pruned.uninstalled == 0
    assert set(state.entries) == {"old", "older", "new", "mid"}, "the old state is unchanged"


def test_prune_never_forgets_resident_or_pinned_models_even_over_the_bound():
    state = used_at(("idle", 5.0), ("pinned", 0.0), ("resident", 0.0))
    state = set_pinned(state, "pinned", True)
    state = set_resident(state, "resident", True)
    pruned = prune(state, frozenset(), max_entries=1)
    assert pruned.forgotten == ("idle",)
    assert set(pruned.state.entries) == {"pinned", "resident"}


def test_prune_forgets_what_ollama_no_longer_lists_first():
    state = used_at(("deleted", 9.0), ("kept", 1.0), ("also", 2.0))
    pruned = prune(state, frozenset({"kept", "also"}), max_entries=10)
    assert pruned.forgotten == ("deleted",) and pruned.uninstalled == 1
    assert prune(pruned.state, frozenset({"kept", "also"}), max_entries=10).forgotten == ()


def test_prune_with_nothing_to_forget_returns_the_same_state():
    state = used_at(("a", 1.0))
    assert prune(state, None).state is state
    assert MAX_ENTRIES >= 10_000, "the benchmarks plan for 10,000 models"


@given(st.lists(st.tuples(st.sampled_from(["touch", "load", "unload", "evict", "pin", "prune", "commit"]),
                          st.sampled_from(["a", "b", "c", "d", "e"])), max_size=60))
@settings(max_examples=200, deadline=None)
def test_the_resident_index_always_names_exactly_the_resident_entries(ops):
    state = CacheState()
    for i, (op, name) in enumerate(ops):
        base = state
        if op == "touch":
            state = touch(state, name, float(i), GiB)
        elif op == "load":
            state = set_resident(state, name, True, GiB, measured=True, gpu=i % 2)
        elif op == "unload":
            state = set_resident(state, name, False)
        elif op == "evict" and name in state.entries and state.entries[name].resident:
            state = evicted(state, name, "gdsf-decay")
        elif op == "pin":
            state = set_pinned(state, name, not (name in state.entries and state.entries[name].pinned))
        elif op == "prune":
            state = prune(state, {"a", "b"}, max_entries=3).state
        elif op == "commit":
            state = commit(touch(base, "e", float(i), GiB), base, set_resident(base, name, True, GiB))
        assert [e.name for e in state.resident()] == sorted(n for n, e in state.entries.items() if e.resident)
        assert CacheState.of(state.entries.values()).resident() == state.resident()


def test_a_change_leaves_the_state_it_was_made_from_as_it_was():
    before = CacheState.of([Entry(f"m{i}", GiB) for i in range(100)])
    after = set_resident(touch(before, "m5", 1.0), "m5", True)
    assert before.entries["m5"].hits == 0 and not before.entries["m5"].resident and before.resident() == []
    assert after.entries["m5"].hits == 1 and [e.name for e in after.resident()] == ["m5"]
    assert after.entries["m6"] is before.entries["m6"]
