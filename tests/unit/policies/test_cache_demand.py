"""demand: requests per switch now (decayed, bounded by staleness) × measured load seconds ÷ size."""

from hypothesis import given, settings
from hypothesis import strategies as st

from memwarden.policies import cache, demand
from memwarden.policies.cache import (
    CacheState,
    commit,
    demand_rate,
    evicted,
    eviction_order,
    note_load_time,
    plan_ensure,
    plan_room,
    set_pinned,
    set_resident,
    touch,
)

GB = 10**9
POLICY = "demand"


def asked(state: CacheState, *names: str, size: int = 2 * GB) -> CacheState:
    """One request per name, in order (a name repeated back to back is a run of requests for one model)."""
    for name in names:
        state = touch(state, name, float(state.ticks), size if name not in state.entries else None)
    return state


def load(state: CacheState, *names: str, size: int = 2 * GB) -> CacheState:
    for name in names:
        state = set_resident(state, name, True, size, measured=True)
    return state


def order(state: CacheState) -> list[str]:
    return [e.name for e in eviction_order(state, POLICY)]


def test_it_is_the_default_policy():
    assert cache.DEFAULT_POLICY == POLICY and POLICY in cache.POLICIES


def test_a_run_of_requests_for_one_model_counts_once():
    # "run" was asked for 40 times in one run, "often" in 3 runs: a run costs at most one load, so 3 > 1.
    state = asked(CacheState(), *["run"] * 40, "often", "x", "often", "y", "often", "z")
    assert state.entries["run"].visits == 1.0 and state.entries["run"].hits == 40
    state = load(state, "run", "often")
    assert order(state) == ["run", "often"]
    assert eviction_order(state, "gdsf-decay")[0].name == "often", "counting requests, the run wins"


def test_a_long_run_does_not_age_the_other_models():
    state = load(asked(CacheState(), "a", "b", "a", "b"), "a", "b")
    before = {n: demand_rate(state.entries[n], state.switches) for n in "ab"}
    later = asked(state, *["b"] * 5000)
    assert later.switches == state.switches
    assert demand_rate(later.entries["a"], later.switches) == before["a"]


def test_counts_halve_every_half_life_of_switches():
    state = asked(CacheState(), "a", "a", "b", "a")  # a: two switches (the repeat is not one)
    rate = demand_rate(state.entries["a"], state.switches)
    assert abs(rate - 2 / demand.DEMAND_HALF_LIFE) < 0.01 / demand.DEMAND_HALF_LIFE
    half_life = int(demand.DEMAND_HALF_LIFE)
    state = asked(state, *[f"o{i % 2}" for i in range(half_life)])  # each request a switch, to other models
    aged = state.entries["a"].visits * 0.5 ** ((state.switches - state.entries["a"].visit_switch) / half_life)
    assert abs(aged - 2 * 0.5) < 0.01


def test_a_favourite_whose_requests_stopped_goes_within_a_few_switches():
    # "old" is asked for in half of 400 switches, "steady" in a tenth; then "old" no more.
    state = CacheState()
    for i in range(200):
        state = asked(state, "old", "steady" if i % 5 == 0 else f"x{i % 7}")
    state = load(state, "old", "steady")
    assert order(state) == ["steady", "old"], "while both are asked for, the favourite stays"
    switches = 0
    while order(state)[0] != "old":
        state = asked(state, "steady" if switches % 5 == 4 else f"x{switches % 7}")
        switches += 1
    # Its bound, DEMAND_STALE / switches since its last use, fell under steady's rate (about 1/10 a switch).
    assert switches <= 2 * demand.DEMAND_STALE * 10
    assert eviction_order(state, "gdsf-decay")[0].name == "steady", "decayed counts alone still keep it"


def test_a_measured_slow_load_keeps_a_model_over_an_equal_one():
    state = load(asked(CacheState(), "a", "b", "a", "b"), "a", "b")
    assert order(state) == ["a", "b"]  # the same uses and size: "a" was used longer ago
    slow = note_load_time(state, "a", 30.0)  # a slow disk: "a" takes 30 s to load
    assert order(slow) == ["b", "a"]
    assert plan_room(slow, "c", 2 * GB, 4 * GB, POLICY).victims == ("b",)


def test_at_equal_demand_the_larger_model_goes_first_unless_its_load_costs_more_per_byte():
    state = asked(CacheState(), "big", size=8 * GB)
    state = asked(state, "small", "big", "small", size=2 * GB)
    state = load(load(state, "big", size=8 * GB), "small")
    assert order(state) == ["big", "small"]  # by the estimate, 1 s + size / 2 GB/s: more seconds per byte small
    state = note_load_time(note_load_time(state, "big", 40.0), "small", 2.0)
    assert order(state) == ["small", "big"]


def test_pinned_models_are_never_victims_and_eviction_keeps_no_inflation():
    state = load(asked(CacheState(), "a", "b", "a", "b", "a"), "a", "b")
    state = set_pinned(state, "b", True)
    assert order(state) == ["a"]
    plan = plan_room(state, "c", 3 * GB, 4 * GB, POLICY)
    assert plan.victims == ("a",) and not plan.fits
    assert evicted(state, "a", POLICY).inflation == 0.0


def test_commit_keeps_the_switches_of_the_later_state():
    base = asked(CacheState(), "a", "b")
    current = asked(base, "c", "d", "c")
    planned = plan_ensure(base, "a", 9.0, listed=True, installed_size=GB, budgets={0: 8 * GB}, policy=POLICY)
    merged = commit(current, base, planned.state_after)
    assert (merged.switches, merged.last_name) == (current.switches, "c")
    assert merged.entries["a"].visits == planned.state_after.entries["a"].visits


Request = st.tuples(st.sampled_from("abcdef"), st.integers(1, 3))  # a model, how many requests in a row


@given(st.lists(Request, min_size=1, max_size=80), st.sets(st.sampled_from("abcdef")), st.integers(1, 7))
@settings(max_examples=200, deadline=None)
def test_the_eviction_order_is_the_value_from_the_whole_history(runs, pinned, need_gb):
    """The state's incremental counts and the order they give agree with a recount of every request."""
    sizes = {n: (i + 1) * GB // 2 for i, n in enumerate("abcdef")}
    state, history = CacheState(), []
    for name, times in runs:
        for _ in range(times):
            state = touch(state, name, float(len(history)), sizes[name])
            history.append(name)
    switches_at = [i for i, n in enumerate(history) if i == 0 or history[i - 1] != n]
    clock = len(switches_at)
    assert state.switches == clock
    for name in pinned:
        state = set_pinned(state, name, True)
    for name in state.entries:
        if name != history[-1]:
            state = set_resident(state, name, True, sizes[name], measured=True)

    def recount(name: str) -> float:
        ks = [k + 1 for k, i in enumerate(switches_at) if history[i] == name]  # switch numbers, from 1
        rate = sum(0.5 ** ((ks[-1] - k) / demand.DEMAND_HALF_LIFE) for k in ks) \
            * 0.5 ** ((clock - ks[-1]) / demand.DEMAND_HALF_LIFE) / demand.DEMAND_HALF_LIFE
        age = clock - ks[-1]
        rate = min(rate, demand.DEMAND_STALE / age) if age else rate
        return rate * (cache.LOAD_FIXED_SECONDS + sizes[name] / cache.LOAD_BYTES_PER_SECOND) / sizes[name]

    expected = sorted((n for n in state.residents if n not in pinned),
                      key=lambda n: (recount(n), state.entries[n].last_used, n))
    got = order(state)
    assert [round(recount(n), 18) for n in got] == [round(recount(n), 18) for n in expected]
    assert sorted(got) == sorted(expected)
    room = plan_room(state, history[-1], need_gb * GB, 8 * GB, POLICY)
    head = got[:got.index(room.victims[-1]) + 1] if room.victims else []
    assert list(room.victims) == [n for n in head if n in room.victims], "victims come from the order's head"
    if room.fits:
        assert all(room.used_after + sizes[n] + need_gb * GB > 8 * GB for n in room.victims), "each one is needed"
    kept = sum(sizes[n] for n in state.residents if n not in room.victims)
    assert room.fits == (kept + need_gb * GB <= 8 * GB)
