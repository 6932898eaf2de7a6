"""plan_ensure: the whole plan for making one model resident, decided once from plain inputs; and commit, which
brings a plan into the state as it is by the time the plan has been carried out."""

from memwarden.policies.cache import (
    CacheState,
    commit,
    estimate_size,
    plan_ensure,
    set_pinned,
    set_resident,
    touch,
)

GiB = 1024**3
NOW = 1000.0


def state_of(*models: tuple[str, int, float], gpu: int | None = 0) -> CacheState:
    """Resident models (name, size, last_used), measured, on `gpu`."""
    state = CacheState()
    for name, size, when in models:
        state = set_resident(touch(state, name, when, size), name, True, size, measured=True, gpu=gpu)
    return state


def plan(state: CacheState, name: str = "new", *, listed: bool = False, installed: int | None = 4 * GiB,
         budgets: dict[int, int] | None = None, policy: str = "lru", max_resident: int = 0, load: bool = True,
         max_entries: int = 10_000):
    return plan_ensure(state, name, NOW, listed=listed, installed_size=installed,
                       budgets={0: 12 * GiB} if budgets is None else budgets, policy=policy,
                       max_resident=max_resident, load=load, max_entries=max_entries)


def test_a_listed_model_is_a_hit_recorded_as_one_more_use_and_nothing_else():
    state = state_of(("a", 4 * GiB, 1.0))
    p = plan(state, "a", listed=True)
    assert p.hit and p.victims == () and not p.load and p.fits
    entry = p.state_after.entries["a"]
    assert entry.hits == 2 and entry.last_used == NOW and entry.resident
    assert p.noted is p.state_after, "a hit changes the record of use only"
    assert state.entries["a"].hits == 1, "the input state is never changed"


def test_victims_follow_the_policy_and_stop_once_it_fits():
    state = state_of(("old", 4 * GiB, 1.0), ("mid", 4 * GiB, 2.0), ("new-ish", 4 * GiB, 3.0))
    p = plan(state, installed=6 * GiB)
    assert p.victims == ("old", "mid") and p.fits and p.load and p.need == 6 * GiB
    after = p.state_after.entries
    assert not after["old"].resident and not after["mid"].resident and after["new-ish"].resident
    assert after["new"].resident and after["new"].size == 6 * GiB
    assert p.used_after == 4 * GiB and p.budget == 12 * GiB


def test_gdsf_evicts_the_large_rarely_used_model_before_the_small_frequent_one():
    state = CacheState()
    for _ in range(5):
        state = touch(state, "small", 1.0, GiB)
    state = set_resident(touch(state, "big", 2.0, 8 * GiB), "big", True, 8 * GiB, measured=True, gpu=0)
    state = set_resident(state, "small", True, GiB, measured=True, gpu=0)
    assert plan(state, installed=4 * GiB, policy="gdsf").victims == ("big",)
    assert plan(state, installed=4 * GiB, policy="lru").victims == ("small",), "LRU: the least recent first"


def test_pinned_models_are_never_victims_and_a_plan_that_cannot_fit_says_so():
    state = set_pinned(state_of(("pinned", 8 * GiB, 1.0), ("other", 2 * GiB, 2.0)), "pinned", True)
    p = plan(state, installed=6 * GiB)
    assert not p.fits and not p.load and "pinned" not in p.victims
    assert p.shortfall == 12 * GiB - p.used_after and p.used_after == 8 * GiB
    assert p.state_after is p.noted, "a refusal does nothing: the state after is the request recorded"
    assert p.noted.entries["new"].size == 6 * GiB and not p.noted.entries["new"].resident
    assert p.noted.entries["other"].resident


def test_max_resident_evicts_for_the_count_even_when_the_bytes_fit():
    state = state_of(("a", GiB, 1.0), ("b", GiB, 2.0), ("c", GiB, 3.0))
    assert plan(state, installed=GiB, max_resident=3).victims == ("a",)
    assert plan(state, installed=GiB, max_resident=0).victims == ()


def test_without_load_room_is_made_but_the_model_is_not_marked_resident():
    state = state_of(("a", 8 * GiB, 1.0))
    p = plan(state, installed=6 * GiB, load=False)
    assert p.victims == ("a",) and p.fits and not p.load
    assert not p.state_after.entries["new"].resident and not p.state_after.entries["a"].resident


def test_no_gpu_means_nothing_to_arbitrate():
    p = plan(state_of(("a", 8 * GiB, 1.0)), installed=6 * GiB, budgets={})
    assert p.fits and p.victims == () and p.load


def test_on_two_gpus_the_one_needing_fewer_victims_is_chosen():
    state = state_of(("a", 4 * GiB, 1.0), ("b", 4 * GiB, 2.0), ("x", 4 * GiB, 3.0), gpu=0)
    state = set_resident(touch(state, "c", 4.0, 5 * GiB), "c", True, 5 * GiB, measured=True, gpu=1)
    p = plan(state, installed=8 * GiB, budgets={0: 12 * GiB, 1: 10 * GiB})
    assert p.victims == ("c",), "GPU 0 would need two victims (a, b), GPU 1 one"
    assert not p.state_after.entries["c"].resident and p.state_after.entries["a"].resident


def test_with_a_model_of_unknown_placement_all_gpus_form_one_pool():
    state = state_of(("a", 4 * GiB, 1.0), gpu=None)
    p = plan(state, installed=14 * GiB, budgets={0: 8 * GiB, 1: 8 * GiB})
    assert p.fits and p.victims == ("a",) and p.budget == 16 * GiB


def test_freed_room_is_confirmed_on_the_gpu_with_the_largest_budget():
    assert plan(CacheState(), budgets={0: 4 * GiB, 1: 10 * GiB, 2: 10 * GiB}).gpu == 1


def test_a_measured_size_beats_the_listed_one():
    state = set_resident(CacheState(), "m", False, 3 * GiB, measured=True)
    assert estimate_size(state.entries["m"], 5 * GiB) == 3 * GiB
    assert estimate_size(None, 5 * GiB) == 5 * GiB
    assert estimate_size(touch(CacheState(), "m", 1.0, 2 * GiB).entries["m"], None) == 2 * GiB


def test_the_table_bound_is_part_of_the_plan():
    state = CacheState()
    for i in range(3):
        state = touch(state, f"m{i}", float(i), GiB)
    p = plan(state, "m9", max_entries=3)
    assert p.forgotten == ("m0",) and "m0" not in p.state_after.entries and "m9" in p.state_after.entries


def test_commit_keeps_what_happened_meanwhile_to_other_models_and_every_pin():
    base = state_of(("a", 8 * GiB, 1.0), ("b", 2 * GiB, 2.0))
    p = plan(base, installed=6 * GiB)
    assert p.victims == ("a",)
    # While the plan was carried out: a request for b was served, and an operator pinned the new model.
    now = set_pinned(touch(base, "b", 5.0), "new", True)
    after = commit(now, base, p.state_after)
    assert after.entries["b"].hits == 2 and after.entries["b"].last_used == 5.0, "b's use is kept"
    assert after.entries["new"].resident and after.entries["new"].pinned, "the plan's residency, the pin kept"
    assert not after.entries["a"].resident
    assert commit(base, base, p.state_after) is p.state_after, "nothing happened meanwhile: the plan as is"


def test_each_gpus_plan_judges_demand_by_the_whole_states_clock():
    state = CacheState()
    for i in range(40):  # "fav" was asked for in half of 80 switches, then not for 60
        state = touch(touch(state, "fav", float(i), 4 * GiB), f"x{i % 3}", float(i), GiB)
    for i in range(60):  # "fresh" in a third of the 60 since
        state = touch(state, "fresh" if i % 3 == 0 else f"x{i % 3}", 100.0 + i, 4 * GiB)
    for name in ("fav", "fresh"):  # GPU 0, full
        state = set_resident(state, name, True, 4 * GiB, measured=True, gpu=0)
    for name in ("g1a", "g1b"):  # GPU 1, where 4 GiB more would take both
        state = set_resident(touch(state, name, 200.0, 3 * GiB), name, True, 3 * GiB, measured=True, gpu=1)
    p = plan(state, installed=4 * GiB, budgets={0: 8 * GiB, 1: 6 * GiB}, policy="demand")
    assert p.victims == ("fav",), "GPU 0 needs one victim: the favourite whose requests stopped"
