"""The model scheduler on its own: shared inputs over a fake GPU and Ollama, and a stand-in for the lease ledger
that says what leases leave for models and records where freed VRAM is confirmed."""

from __future__ import annotations

import asyncio

import pytest

from memwarden.arbiter.errors import ArbiterError
from memwarden.arbiter.inputs import ArbiterInputs
from memwarden.arbiter.model_table import ModelTable, switch_clock
from memwarden.arbiter.scheduler import ModelScheduler
from memwarden.ollama.client import OllamaError
from memwarden.policies.cache import Entry
from support.arbiter_fakes import FakeGpu, FakeOllama, Gate, GiB, fake_config

A, B, C = "a:latest", "b:latest", "c:latest"


class Leases:
    """What the scheduler asks of the ledger: the model budget per GPU, and a wait for freed VRAM."""

    def __init__(self, budget: int):
        self.budget = budget
        self.confirmed: list[tuple[int, int]] = []

    def model_budget(self, snap, index: int) -> int:
        return self.budget

    async def confirm_free(self, index: int, size: int, runner_pids, timeout: float) -> float:
        self.confirmed.append((index, size))
        return 0.0


@pytest.fixture
def world(db):
    def make(budget: int = 12 * GiB, dry_run: bool = False, resident: tuple[str, ...] = (A, B)):
        gpu = FakeGpu(12 * GiB)
        ollama = FakeOllama(gpu, {A: 4 * GiB, B: 4 * GiB, C: 6 * GiB})
        for name in resident:
            ollama.put(name)
        clock = iter(range(1000, 10**6)).__next__
        inputs = ArbiterInputs(fake_config(dry_run=dry_run, scheduler="lru"), gpu, ollama, clock=clock)  # type: ignore[arg-type]
        leases = Leases(budget)
        scheduler = ModelScheduler(inputs, ModelTable(db), asyncio.Lock(), leases)  # type: ignore[arg-type]
        return scheduler, ollama, leases
    return make


async def test_a_miss_unloads_the_policys_victims_confirms_the_room_then_loads(world):
    scheduler, ollama, leases = world(budget=10 * GiB)
    await scheduler.ensure(A, load=False)  # a was used last: b is the least recent
    result = await scheduler.ensure(C)
    assert result == {"model": C, "hit": False, "evicted": [B], "loaded": True}
    assert ollama.calls == [("unload", B), ("load", C)]
    assert leases.confirmed == [(0, 6 * GiB)]
    entries = scheduler.inputs.cache.entries
    assert entries[C].resident and not entries[B].resident and entries[A].resident
    assert scheduler.table.rows()[C]["size"] == 6 * GiB
    stats = scheduler.inputs.stats
    assert (stats["misses"], stats["hits"], stats["evictions"]) == (1, 1, 1)


async def test_a_hit_calls_nothing_and_counts(world):
    scheduler, ollama, _ = world()
    assert await scheduler.ensure(A) == {"model": A, "hit": True, "evicted": [], "loaded": False}
    assert ollama.calls == [] and scheduler.inputs.stats["hits"] == 1
    assert scheduler.table.rows()[A]["hits"] == 1


async def test_a_dry_run_says_what_it_would_evict_and_touches_nothing(world):
    scheduler, ollama, _ = world(budget=10 * GiB, dry_run=True)
    result = await scheduler.ensure(C)
    assert result["would_evict"] and result["evicted"] == [] and result["loaded"] is False
    assert ollama.calls == [] and set(ollama.resident) == {A, B}
    assert C not in scheduler.table.rows(), "a dry run writes nothing"


async def test_leases_shrink_the_budget_until_nothing_fits(world):
    scheduler, ollama, _ = world(budget=5 * GiB)
    with pytest.raises(ArbiterError, match=r"needs 6\.0 GiB"):
        await scheduler.ensure(C)
    assert ollama.calls == []
    assert scheduler.table.rows()[C]["size"] == 6 * GiB, "the request and its size estimate are recorded"


async def test_what_happens_while_a_model_loads_is_kept(world):
    scheduler, ollama, _ = world(budget=12 * GiB, resident=(A,))
    await scheduler.ensure(A)  # tracked, resident
    ollama.load_gate = Gate()
    loading = asyncio.create_task(scheduler.ensure(B))
    await ollama.load_gate.reached.wait()
    scheduler.note_use(A, "10m")  # the proxy serves a while b loads
    await scheduler.pin(B, True)  # and an operator pins b
    ollama.load_gate.opened.set()
    await loading
    entries = scheduler.inputs.cache.entries
    assert entries[A].hits == 2 and scheduler.inputs.keep_alive[A] == "600s"
    assert entries[B].resident and entries[B].pinned and scheduler.table.rows()[B]["pinned"] == 1


async def test_an_unload_that_fails_leaves_the_request_recorded_and_raises(world):
    scheduler, ollama, _ = world(budget=10 * GiB)

    async def refuse(name: str) -> None:
        raise OllamaError("connection refused")

    ollama.unload = refuse  # type: ignore[method-assign]
    with pytest.raises(OllamaError):
        await scheduler.ensure(C)
    entry = scheduler.inputs.cache.entries[C]
    assert entry.hits == 1 and not entry.resident and ("load", C) not in ollama.calls


async def test_ensure_meets_the_cache_policy_once_then_only_commits(world, monkeypatch):
    """Plan once, then act: between the Ollama calls of one `ensure`, the cache policy is asked nothing."""
    from memwarden.policies import cache

    scheduler, ollama, _ = world(budget=10 * GiB)
    await scheduler.ensure(A, load=False)
    asked: list[str] = []
    for name in ("touch", "set_resident", "plan_room", "plan_room_on", "evicted", "eviction_order", "plan_ensure",
                 "commit"):
        real = getattr(cache, name)
        monkeypatch.setattr(cache, name, lambda *a, _real=real, _name=name, **kw: (asked.append(_name),
                                                                                   _real(*a, **kw))[1])
    real_unload, real_load = ollama.unload, ollama.load

    async def unload(name, *a, **kw):
        asked.append("ollama.unload")
        return await real_unload(name, *a, **kw)

    async def load(name, *a, **kw):
        asked.append("ollama.load")
        return await real_load(name, *a, **kw)

    monkeypatch.setattr(ollama, "unload", unload)
    monkeypatch.setattr(ollama, "load", load)
    result = await scheduler.ensure(C)
    assert result["evicted"] == [B]
    policy = [a for a in asked if not a.startswith("ollama.")]
    assert policy.count("plan_ensure") == 1
    first_call = asked.index("ollama.unload")
    assert [a for a in asked[first_call:] if not a.startswith("ollama.")] in ([], ["commit"])


async def test_a_load_the_scheduler_makes_is_timed_into_the_models_load_time(world):
    scheduler, _, _ = world(budget=10 * GiB)
    ticks = iter([100.0, 107.5])
    scheduler.timer = ticks.__next__  # the load of c takes 7.5 s
    await scheduler.ensure(C)
    assert scheduler.inputs.cache.entries[C].load_seconds == 7.5
    assert scheduler.inputs.cache.entries[B].load_seconds == 0.0  # evicted, never loaded here: still estimated
    await scheduler.ensure(A, load=False)  # a hit: nothing loaded, nothing timed
    assert scheduler.inputs.cache.entries[A].load_seconds == 0.0


async def test_a_load_whose_answer_reports_its_duration_is_learned_from_it_not_timed(world):
    scheduler, ollama, _ = world(budget=10 * GiB)
    ollama.load_duration = 12.25
    scheduler.timer = iter([100.0, 100.5]).__next__  # the call itself took 0.5 s
    await scheduler.ensure(C)
    assert scheduler.inputs.cache.entries[C].load_seconds == 12.25


async def test_the_load_duration_of_an_answer_that_passed_the_scheduler_is_the_models_load_time(world):
    scheduler, _, _ = world(budget=10 * GiB)
    await scheduler.ensure(C, load=False)  # room made; the request itself makes Ollama load it
    assert scheduler.inputs.cache.entries[C].load_seconds == 0.0, "nothing loaded here: still the estimate"
    scheduler.note_answer(C, {"done": True, "done_reason": "stop", "load_duration": 8_000_000_000})
    assert scheduler.inputs.cache.entries[C].load_seconds == 8.0
    scheduler.note_answer(C, {"done": True, "done_reason": "stop", "load_duration": 0})  # resident: no load
    scheduler.note_answer(C, {"done": True, "done_reason": "stop", "load_duration": 4_000_000_000})
    assert scheduler.inputs.cache.entries[C].load_seconds == 6.0, "averaged with what was known"
    scheduler.note_answer("never-seen:latest", {"load_duration": 10**9})
    assert "never-seen:latest" not in scheduler.inputs.cache.entries


async def test_what_the_policy_learned_of_a_model_outlives_a_restart(world, db):
    scheduler, _, _ = world(budget=10 * GiB)
    for name in (A, B, A, C):  # three switches counted, and a load reported through an answer
        await scheduler.ensure(name, load=False)
    scheduler.note_answer(C, {"done": True, "load_duration": 9_000_000_000})
    scheduler.flush()
    learned = scheduler.inputs.cache

    entries, _ = ModelTable(db).load()  # what the next daemon starts from
    again = {e.name: e for e in entries}
    assert again[C].load_seconds == 9.0
    for name in (A, B, C):
        assert (again[name].visits, again[name].visit_switch) == (learned.entries[name].visits,
                                                                  learned.entries[name].visit_switch)
        # demand's other counts are not stored: the restarted one starts as the count, the short one empty.
        assert (again[name].visits_restarted, again[name].visits_short) == (again[name].visits, 0.0)
    assert switch_clock(entries) == learned.switches, "the counts decay on from the switch they were left at"


def test_a_stored_figure_that_is_not_a_finite_count_is_read_as_not_learned(db):
    table = ModelTable(db)
    table.save(Entry(A, 4 * GiB, load_seconds=3.0, visits=2.0, visit_switch=7), None)
    db["models"].update(A, {"load_seconds": float("nan"), "visits": -1.0})
    (entry,), _ = table.load()
    assert (entry.load_seconds, entry.visits, entry.visit_switch) == (0.0, 0.0, 7)
