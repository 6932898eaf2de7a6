"""A lease request whose client goes away (its task cancelled) at each stage of a grant: nothing is left granted to
nobody, and whatever was evicted for it comes back."""

from __future__ import annotations

import asyncio

import pytest

from memwarden.arbiter.ledger import ABANDONED
from support.arbiter_fakes import FakeGpu, FakeOllama, Gate, GiB, make_arbiter

BIG = "big:latest"


@pytest.fixture
def world(tmp_path, db):
    gpu = FakeGpu(12 * GiB)
    ollama = FakeOllama(gpu, {BIG: 6 * GiB, "small:latest": 3 * GiB})
    ollama.put(BIG)
    return gpu, ollama, make_arbiter(tmp_path, db, gpu, ollama, reserve=GiB)


async def cancel(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def nothing_granted(arbiter) -> None:
    assert arbiter.leases == {}
    assert arbiter.store.active() == []


async def test_cancelled_while_waiting_for_room_grants_nothing(world):
    _, ollama, arbiter = world
    await arbiter.pin(BIG, True)
    task = asyncio.create_task(arbiter.acquire(8 * GiB, "trainer", wait=60))
    while not arbiter.changed._waiters:  # the plan was refused; it now waits for a change
        await asyncio.sleep(0.01)
    await cancel(task)
    nothing_granted(arbiter)
    await arbiter.pin(BIG, False)
    async with arbiter.changed:
        arbiter.changed.notify_all()
    await asyncio.sleep(0.05)
    nothing_granted(arbiter)
    assert ("unload", BIG) not in ollama.calls


async def test_cancelled_while_another_grant_holds_the_lock_grants_nothing(world):
    _, ollama, arbiter = world
    async with arbiter.lock:
        task = asyncio.create_task(arbiter.acquire(GiB, "trainer"))
        await asyncio.sleep(0.05)
        await cancel(task)
    nothing_granted(arbiter)
    assert ollama.calls == []


async def test_cancelled_during_the_unload_rolls_back_and_reloads(world):
    _, ollama, arbiter = world
    ollama.unload_gate = Gate()
    task = asyncio.create_task(arbiter.acquire(8 * GiB, "trainer"))
    await ollama.unload_gate.reached.wait()
    task.cancel()  # the unload call is cut short: the model may or may not have gone
    ollama.unload_gate.opened.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    nothing_granted(arbiter)
    assert BIG in ollama.resident, "what was evicted for the abandoned lease is back"
    [record] = arbiter.store.recent()
    assert record.state == "released" and record.release_reason == ABANDONED
    assert [r["name"] for r in record.restored if r["ok"]] == [BIG]


async def test_cancelled_while_confirming_free_memory_rolls_back(world):
    gpu, ollama, arbiter = world
    ollama.keep_vram = True  # the runner lingers: the grant waits for its VRAM
    task = asyncio.create_task(arbiter.acquire(8 * GiB, "trainer"))
    while ("unload", BIG) not in ollama.calls or BIG in ollama.resident:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # polling the GPU now
    assert not task.done()
    ollama.keep_vram = False
    gpu.booked.clear()
    await cancel(task)
    nothing_granted(arbiter)
    assert BIG in ollama.resident
    assert arbiter.store.recent()[0].release_reason == ABANDONED


async def test_a_second_cancellation_during_the_rollback_does_not_stop_it(world):
    gpu, ollama, arbiter = world
    ollama.keep_vram = True
    ollama.load_gate = Gate()
    task = asyncio.create_task(arbiter.acquire(8 * GiB, "trainer"))
    while BIG in ollama.resident:  # unloaded; the grant now waits for the runner's VRAM
        await asyncio.sleep(0.01)
    gpu.booked.clear()  # the runner lets go just as the client goes away: room to reload
    task.cancel()
    await ollama.load_gate.reached.wait()  # the rollback is reloading
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done() and arbiter.lock.locked(), "the rollback keeps the lock until it is done"
    ollama.load_gate.opened.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    nothing_granted(arbiter)
    assert BIG in ollama.resident
    assert not arbiter.lock.locked()


async def test_a_completed_grant_is_not_undone(world):
    _, ollama, arbiter = world
    granted = await arbiter.acquire(8 * GiB, "trainer")
    assert list(arbiter.leases) == [granted["id"]] and BIG not in ollama.resident


async def test_a_release_whose_caller_goes_away_still_restores(world):
    _, ollama, arbiter = world
    granted = await arbiter.acquire(8 * GiB, "trainer")
    ollama.load_gate = Gate()
    task = asyncio.create_task(arbiter.release(granted["id"]))
    await ollama.load_gate.reached.wait()
    task.cancel()
    ollama.load_gate.opened.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert BIG in ollama.resident
    [record] = arbiter.store.recent()
    assert record.state == "released" and record.restored[0]["ok"]
