"""When runs start: pending runs first, then due adapters in their window — on an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from memwarden.learning.runs import RunStore
from memwarden.learning.scheduling import RunScheduler

from .conftest import T0, remember

MINUTE_MARK = T0 - 20  # T0 is 20 s past a minute: here "* * * * *" is open, at T0 it next opens in 40 s


@pytest.fixture
def make(db, store, clock, make_config):
    def factory(**learning) -> tuple[RunScheduler, list[str]]:
        launched: list[str] = []

        async def execute(run_id: str) -> None:
            launched.append(run_id)

        return RunScheduler(make_config(learning), RunStore(db), store, execute, clock), launched
    return factory


async def settle(scheduler: RunScheduler) -> None:
    if scheduler.task is not None:
        await scheduler.task


async def test_below_the_threshold_nothing_starts(make, store):
    scheduler, launched = make(importance_threshold=100)
    remember(store)  # 50
    await scheduler.tick()
    assert launched == [] and scheduler.runs.history() == []
    [decision] = scheduler.due(T0)
    assert (decision.adapter, decision.reason, decision.shortfall) == ("alice", "below_threshold", 50.0)


async def test_a_due_adapter_starts_at_once_without_a_window(make, store, clock):
    scheduler, launched = make(importance_threshold=20)
    remember(store)
    await scheduler.tick()
    await settle(scheduler)
    [run] = scheduler.runs.history()
    assert launched == [run["id"]]
    assert (run["adapter"], run["profile"], run["trigger"], run["state"], run["created_at"]) == (
        "alice", "alice", "threshold", "queued", T0)


async def test_a_due_adapter_waits_for_its_window_logged_once(make, store, clock, monkeypatch):
    from memwarden.learning import scheduling

    logged: list[str] = []
    monkeypatch.setattr(scheduling.log, "info", lambda msg, **kw: logged.append(msg))
    scheduler, launched = make(window="* * * * *")
    remember(store)
    await scheduler.tick()
    await scheduler.tick()
    assert launched == [] and logged == ["decision: run due, waiting for the window"]
    clock.now = MINUTE_MARK + 60  # the window opens
    await scheduler.tick()
    await settle(scheduler)
    assert len(launched) == 1 and logged[-1] == "decision: run due"


async def test_a_pending_run_goes_before_any_due_adapter_and_one_run_at_a_time(make, store, clock):
    scheduler, launched = make()
    remember(store)
    remember(store, "bob")
    scheduler.runs.insert("old", "bob", "bob", "threshold", T0 - 500, "lora")
    scheduler.runs.set_state("old", "preempted")
    await scheduler.tick()
    assert scheduler.busy
    await scheduler.tick()  # busy: nothing more
    await settle(scheduler)
    assert launched == ["old"]
    assert [r["id"] for r in scheduler.runs.history()] == ["old"]


async def test_min_interval_since_the_last_run_holds_the_next_one(make, store, clock):
    scheduler, launched = make(min_interval="1h")
    remember(store)
    scheduler.runs.insert("r1", "alice", "alice", "threshold", T0 - 600, "lora")
    scheduler.runs.set_state("r1", "promoted", started_at=T0 - 600, finished_at=T0 - 300)
    await scheduler.tick()
    assert launched == []
    clock.now = T0 + 3000
    await scheduler.tick()
    await settle(scheduler)
    assert len(launched) == 1


async def test_disabled_or_closing_starts_nothing(make, store):
    for scheduler, _ in (make(enabled=False), make()):
        remember(store)
        scheduler.closing = scheduler.config.learning.enabled
        await scheduler.tick()
        assert scheduler.task is None


async def test_a_manual_start_needs_memories_and_a_base_model(make, store):
    scheduler, launched = make()
    with pytest.raises(RuntimeError, match="no memories feed adapter 'alice'"):
        scheduler.start("alice")
    no_base, _ = make(enabled=False, base_model="")  # a manual start needs no `enabled`, but a base model
    remember(store)
    with pytest.raises(RuntimeError, match=r"learning\.base_model is not set"):
        no_base.start("alice")
    run_id = scheduler.start("alice")
    await asyncio.wait_for(settle(scheduler), 5)
    assert launched == [run_id] and scheduler.runs.get(run_id)["trigger"] == "manual"


async def test_a_manual_start_while_the_last_run_is_only_being_published_is_queued_and_launched_next(
        db, store, clock, make_config):
    runs = RunStore(db)
    launched: list[str] = []
    judged, exported = asyncio.Event(), asyncio.Event()

    async def execute(run_id: str) -> None:
        launched.append(run_id)
        runs.set_state(run_id, "promoted")  # judged and recorded: `train history` shows the run ended ...
        judged.set()
        await exported.wait()  # ... while its adapter is still being exported to Ollama

    scheduler = RunScheduler(make_config({}), runs, store, execute, clock)
    remember(store)
    first = scheduler.start("alice")
    with pytest.raises(RuntimeError, match=rf"a run is in progress \({first}\); one at a time"):
        scheduler.start("alice", running=first)  # not yet judged: one at a time
    await asyncio.wait_for(judged.wait(), 5)
    second = scheduler.start("alice", running=first)
    assert runs.state(second) == "queued" and runs.pending() == [second] and launched == [first]
    exported.set()
    await asyncio.wait_for(settle(scheduler), 5)
    await scheduler.tick()
    await asyncio.wait_for(settle(scheduler), 5)
    assert launched == [first, second]
