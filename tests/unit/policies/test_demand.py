"""demand's memory: the count restarted at a change of law, and the duel that decides whether it ranks."""

import bisect
import functools
import itertools
import random
from dataclasses import replace

from pyrsistent import pmap

from memwarden.policies import demand
from memwarden.policies.cache import CacheState, Entry, demand_value, evicted, plan_room, prune, set_resident, touch

GB = 10**9
MODELS = [f"m{i}" for i in range(10)]


def step(state: CacheState, name: str, budget: int = 8 * GB, size: int = 2 * GB) -> CacheState:
    """One request, as GpuArbiter.ensure drives the state: a miss evicts by the plan, then loads."""
    state = touch(state, name, float(state.ticks), size if name not in state.entries else None)
    if state.entries[name].resident:
        return state
    state = set_resident(state, name, False, size)
    for victim in plan_room(state, name, size, budget, "demand").victims:
        state = evicted(state, victim, "demand")
    return set_resident(state, name, True, size, measured=True)


@functools.cache
def zipf_cumulative(n: int) -> list[float]:
    return list(itertools.accumulate(1 / (k + 1) for k in range(n)))


def zipf(rng: random.Random, ranking: list[str]) -> str:
    cumulative = zipf_cumulative(len(ranking))
    return ranking[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])]


def test_a_steady_law_never_restarts_the_count():
    rng, state = random.Random(1), CacheState()
    for _ in range(6000):
        state = step(state, zipf(rng, MODELS))
    assert state.memory.changed_at == 0 and state.memory.ranking == demand.LONG
    assert state.memory.evidence < 0, "the long memory predicts a steady law better"
    for entry in state.entries.values():
        assert abs(entry.visits_restarted - entry.visits) < 1e-9 * max(entry.visits, 1)


def test_a_steady_law_over_thousands_of_models_never_restarts_the_count():
    # Most switches go to models neither memory has counted yet; they are no evidence of a change.
    rng, state, catalogue = random.Random(2), CacheState(), [f"m{i}" for i in range(3000)]
    for i in range(8000):
        state = touch(state, zipf(rng, catalogue), float(i), GB)
    assert state.memory.changed_at == 0


def test_after_a_reshuffle_the_new_favourite_outranks_the_old_within_tens_of_switches():
    rng, state, ranking = random.Random(8), CacheState(), list(MODELS)
    for _ in range(5):  # reshuffles enough that the duel has seen the restarted count rank better
        rng.shuffle(ranking)
        for _ in range(2000):
            state = step(state, zipf(rng, ranking))
    assert state.memory.ranking == demand.RESTARTED
    old_favourite = ranking[0]
    while ranking.index(old_favourite) < 5:
        rng.shuffle(ranking)
    new_favourite, start = ranking[0], state.switches
    behind = {demand.RESTARTED: 0, demand.LONG: 0}  # the last switch at which the new favourite was not ahead
    seen_at = 0
    for _ in range(1500):
        state = step(state, zipf(rng, ranking))
        seen_at = seen_at or max(0, state.memory.changed_at - start)
        for which in behind:
            new, old = (demand_value(state, state.entries[n], which) for n in (new_favourite, old_favourite))
            if new <= old:
                behind[which] = state.switches - start
    assert 0 < seen_at <= 100, "the change is seen within tens of switches"
    # From 73 switches on here, where one half-life alone (demand before) took 145.
    assert behind[demand.RESTARTED] <= 100 < behind[demand.LONG], behind


def test_the_duel_blames_the_memory_whose_victim_is_asked_for_first():
    # A change was seen at switch 10: "old" was popular before it (its long count is high, its short one has
    # decayed), "new" after it. The long memory would evict "new", the restarted one "old".
    memory = demand.Memory(changed_at=10, blame_long=0.0, blame_restarted=1.0)  # the long memory ranks
    entries = [Entry("old", 2 * GB, resident=True, visits=40.0, visits_short=0.5, visit_switch=9),
               Entry("new", 2 * GB, resident=True, visits=3.0, visits_short=3.0, visits_restarted=3.0,
                     visit_switch=14),
               Entry("asked", 2 * GB)]
    state = replace(CacheState.of(entries, switches=14, memory=memory))
    state = touch(state, "asked", 1.0, 2 * GB)
    room = plan_room(set_resident(state, "asked", False, 2 * GB), "asked", 2 * GB, 4 * GB, "demand")
    assert room.victims == ("new",), "the long memory ranks, and keeps the old favourite"
    state = evicted(set_resident(state, "asked", False, 2 * GB), "new", "demand")
    state = set_resident(state, "asked", True, 2 * GB, measured=True)
    assert state.memory.evicting == ()
    assert dict(state.memory.disputed) == {"new": (demand.LONG, ("new", "old")),
                                           "old": (demand.RESTARTED, ("new", "old"))}
    blamed = touch(state, "new", 2.0)  # the long memory's victim is asked for first: it chose worse
    assert blamed.memory.blame_long > 0.5 and not blamed.memory.disputed
    assert blamed.memory.ranking == demand.RESTARTED


def test_a_load_after_no_change_weighs_nothing():
    state = CacheState()
    for name in ["a", "b", "c", "a", "d"]:
        state = step(state, name, budget=6 * GB)
    assert state.memory.changed_at == 0 and not state.memory.disputed and state.memory.evicting == ()


def test_a_state_built_from_counted_entries_takes_a_switch():
    entries = {"a": Entry("a", GB, visits=3.0, visit_switch=5), "b": Entry("b", GB, visits=1.0, visit_switch=6)}
    state = touch(touch(CacheState(entries, switches=6), "a", 1.0), "b", 2.0)  # its memory knows of no model
    assert state.switches == 8 and state.entries["a"].visits > 3.0 and state.memory.counted == 1


def test_a_model_the_table_forgets_leaves_no_dispute_behind():
    disputed = {"gone": (demand.LONG, ("gone", "kept")), "kept": (demand.RESTARTED, ("gone", "kept"))}
    state = CacheState.of([Entry("gone", GB, last_used=1.0), Entry("kept", GB, last_used=2.0)],
                          memory=demand.Memory(changed_at=3, disputed=pmap(disputed)))
    pruned = prune(state, installed={"kept"})
    assert pruned.forgotten == ("gone",) and set(pruned.state.memory.disputed) == {"kept"}


def bursts(rng: random.Random, state: CacheState, cycles: int) -> CacheState:
    """A steady tenant (Zipf over m0–m4) and a bursty one (m5–m9): 700 requests of the steady one alone, then 300
    shared half and half."""
    for _ in range(cycles):
        for t in range(1000):
            bursting = t >= 700 and rng.random() < 0.5
            state = step(state, zipf(rng, MODELS[5:] if bursting else MODELS[:5]), budget=12 * GB)
    return state


def test_when_a_burst_ends_the_law_before_it_is_back_within_tens_of_switches():
    rng = random.Random(3)
    state = bursts(rng, CacheState(), 4)
    assert len(state.memory.laws) >= 1, "the law before the burst is kept"
    start, behind = state.switches, 0  # the last switch at which the steady tail ranked under the bursty favourite
    for _ in range(200):
        state = step(state, zipf(rng, MODELS[:5]), budget=12 * GB)
        tail, favourite = (demand_value(state, state.entries[n], demand.RESTARTED) for n in ("m4", "m5"))
        if tail <= favourite:
            behind = state.switches - start
    assert state.memory.restarted_from is not None, "the steady law came back"
    # 11 switches here; starting over from the short memory alone (KEPT_LAWS = 0) takes 55.
    assert behind <= 25, behind


def test_kept_laws_and_their_names_are_bounded(monkeypatch):
    monkeypatch.setattr(demand, "KEPT_LAWS", 2)
    monkeypatch.setattr(demand, "LAW_NAMES", 5)
    rng, state, ranking = random.Random(4), CacheState(), [f"m{i}" for i in range(20)]
    for _ in range(6):  # six laws, each over the same 20 models ranked anew
        rng.shuffle(ranking)
        for _ in range(2000):
            state = touch(state, zipf(rng, ranking), float(state.ticks), GB)
    assert len(state.memory.laws) == 2
    assert all(len(law.counts) <= 5 for law in state.memory.laws)
    assert len(state.memory.recent) == demand.LAW_SWITCHES


def test_a_law_of_fewer_switches_than_the_short_memory_holds_is_not_kept():
    brief = demand.Law(pmap({"a": 3.0}), 3.0)
    lasting = demand.Law(pmap({"a": 30.0, "b": 40.0}), 70.0, evidence=4.0)
    assert demand._kept(brief, (lasting,)) == (demand.Law(lasting.counts, lasting.switches),)


def test_the_law_that_ends_counts_the_switches_since_the_change_and_goes_on_from_one_that_came_back():
    recent = demand.EMPTY_RING
    for switch, name in enumerate(["a", "b", "a", "c", "a"], start=1):
        recent = recent.set(switch % demand.LAW_SWITCHES, name)
    memory = demand.Memory(recent=recent, regime_switches=3)  # switches 3, 4 and 5 were since the change
    assert demand._ended(memory, 6) == demand.Law(pmap({"a": 2.0, "c": 1.0}), 3.0)
    back = demand.Law(pmap({"a": 10.0, "d": 5.0}), 15.0)
    assert demand._ended(replace(memory, restarted_from=back), 6) == demand.Law(
        pmap({"a": 12.0, "c": 1.0, "d": 5.0}), 18.0, returns=1)


def test_a_law_back_for_the_second_time_ranks_without_the_duel():
    blamed = demand.Memory(changed_at=10, blame_long=1.0, blame_restarted=5.0)  # the duel says the long memory
    first = demand.Law(pmap({"a": 10.0}), 10.0)
    again = demand.Law(pmap({"a": 10.0}), 10.0, returns=1)
    assert replace(blamed, restarted_from=first).ranking == demand.LONG, "back once: it may be a new law"
    assert replace(blamed, restarted_from=again).ranking == demand.RESTARTED


def test_in_bursts_the_laws_that_come_back_rank():
    state = bursts(random.Random(5), CacheState(), 5)
    assert state.memory.restarted_from is not None and state.memory.restarted_from.returns >= 1
    assert state.memory.ranking == demand.RESTARTED
