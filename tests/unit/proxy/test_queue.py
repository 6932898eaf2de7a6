"""The proxy's queue: requests wait for the coalescing policy's word, with a fake clock and a resident set."""

from __future__ import annotations

import asyncio

import pytest

from memwarden.policies.coalesce import OVERDUE, RESIDENT, SWAP, Limits
from memwarden.proxy.queue import RequestQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(resident: set[str], max_wait: float = 10.0, per_model: int = 1, total: int = 512):
    clock = Clock()
    queue = RequestQueue(lambda: Limits(max_wait, per_model, total), lambda m: m in resident, clock)
    return queue, clock


class Client:
    """One proxied request: it holds its slot until told to finish."""

    def __init__(self, queue: RequestQueue, model: str, sent: list[str]):
        self.sent_event = asyncio.Event()
        self.finish = asyncio.Event()
        self.reason = ""
        self.task = asyncio.create_task(self._run(queue, model, sent))

    async def _run(self, queue: RequestQueue, model: str, sent: list[str]) -> None:
        async with queue.slot(model) as ticket:
            sent.append(model)
            self.reason = ticket.reason
            self.sent_event.set()
            await self.finish.wait()

    async def done(self) -> None:
        self.finish.set()
        await self.task


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_uncontended_request_goes_at_once():
    queue, _ = make({"hot"})
    async with queue.slot("hot") as ticket:
        assert ticket.reason == RESIDENT and ticket.waited == 0.0
        assert queue.in_flight == {"hot": 1}
    assert queue.in_flight == {} and not queue.waiting


async def test_a_burst_is_served_resident_first_and_one_load_per_model():
    resident = {"a"}
    queue, _ = make(resident)
    sent: list[str] = []
    clients = [Client(queue, m, sent) for m in ("a", "b", "a", "a", "c")]
    await settle()
    assert sent == ["a"], "a is busy: b waits for a's queue, c behind b"
    await clients[0].done()
    await settle()
    assert sent == ["a", "a"]
    await clients[2].done()
    await settle()
    await clients[3].done()
    await settle()
    assert sent == ["a", "a", "a", "b"] and clients[1].reason == SWAP
    resident.discard("a")
    resident.add("b")  # b's load evicted a
    await clients[1].done()
    await settle()
    assert sent == ["a", "a", "a", "b", "c"] and clients[4].reason == SWAP
    await clients[4].done()
    assert queue.swaps == 2 and queue.in_flight == {}


async def test_a_request_that_waited_max_wait_goes_ahead_of_resident_work():
    queue, clock = make({"hot"}, max_wait=5.0)
    sent: list[str] = []
    hot = Client(queue, "hot", sent)
    await settle()
    cold = Client(queue, "cold", sent)
    await settle()
    assert sent == ["hot"] and queue._timer is not None, "cold waits while hot is busy"
    clock.now += 4.9
    queue.decide()
    await settle()
    assert sent == ["hot"]
    clock.now += 0.1
    queue.decide()  # what the timer armed for the deadline does
    await settle()
    assert sent == ["hot", "cold"] and cold.reason == OVERDUE and queue.overdue == 1
    await hot.done()
    await cold.done()


async def test_the_timer_is_armed_for_the_oldest_held_request():
    queue = RequestQueue(lambda: Limits(0.05, 1, 512), lambda m: m == "hot")  # the real clock
    sent: list[str] = []
    hot = Client(queue, "hot", sent)
    await settle()
    cold = Client(queue, "cold", sent)
    await asyncio.wait_for(cold.sent_event.wait(), 5)  # woken by the timer alone: nothing else happens
    assert cold.reason == OVERDUE
    await hot.done()
    await cold.done()


async def test_a_waiter_that_goes_away_leaves_the_queue():
    queue, _ = make({"hot"})
    sent: list[str] = []
    first = Client(queue, "hot", sent)
    await settle()
    gone = Client(queue, "hot", sent)
    await settle()
    gone.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone.task
    assert not queue.waiting
    await first.done()
    assert queue.in_flight == {}


async def test_answered_ends_a_load_so_the_next_swap_may_start():
    queue, _ = make(set(), per_model=4)
    sent: list[str] = []
    b = Client(queue, "b", sent)
    await settle()
    c = Client(queue, "c", sent)
    await settle()
    assert sent == ["b"] and queue.loading == {"b"}
    await b.done()  # finished without ever being resident (say, Ollama answered 404): the load is over
    await settle()
    assert sent == ["b", "c"]
    await c.done()


async def test_only_the_request_that_started_its_models_load_is_marked_so_after_its_answer_too():
    queue, _ = make({"hot"})
    async with queue.slot("cold") as loader:
        queue.admitted(loader)
        queue.answered(loader)
        assert loader.started_load and not loader.loading, "its answer's load_duration is a load time"
    async with queue.slot("hot") as resident:
        queue.answered(resident)
        assert not resident.started_load, "a resident model's answer reports no load"
