"""The proxy's queue: model requests wait here until the coalescing policy (policies/coalesce.py) sends them.

`RequestQueue.slot(model)` is an async context manager: it returns once the request may go to Ollama, and its
exit gives the slot back. Each change (a request queued, one answered or finished, a deadline reached) asks the
policy for a plan and carries it out; a request the policy sends on its own is woken, and a timer wakes the
queue when the oldest held request becomes overdue. A request for a resident model that finds the queue empty
goes at once on the policy's word for that case (coalesce.goes_alone), with no plan built and no future made.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from memwarden.logs import get_logger
from memwarden.policies import coalesce

log = get_logger()


@dataclass
class Ticket:
    """A request sent by the policy: its model, why it went, how long it waited in the queue."""

    model: str
    reason: str = ""
    waited: float = 0.0
    loading: bool = False  # its send started its model's load, until answered
    making_room: bool = False  # ... and its admission (the arbiter evicting for it) is under way
    started_load: bool = False  # its send started its model's load (kept after the answer)
    _done: bool = field(default=False, repr=False)


class RequestQueue:
    def __init__(self, limits: Callable[[], coalesce.Limits], resident: Callable[[str], bool],
                 clock: Callable[[], float] = time.monotonic, loads_freely: Callable[[str], bool] = lambda m: False):
        self.limits = limits
        self.resident = resident
        self.loads_freely = loads_freely  # whether a model's load would evict nothing (room to spare)
        self.clock = clock
        self.waiting: dict[int, tuple[coalesce.Queued, asyncio.Future[coalesce.Send]]] = {}
        self.in_flight: dict[str, int] = {}
        self.loading: set[str] = set()
        self.swaps = 0
        self.overdue = 0
        self._keys = itertools.count()
        self._loaders: set[int] = set()  # sends that started their model's load
        self.making_room = 0  # loads whose admission is under way
        self._timer: asyncio.TimerHandle | None = None

    def slot(self, model: str) -> Slot:
        """`async with queue.slot(model) as ticket`: entered once the request may go, the slot given back on exit."""
        return Slot(self, model)

    def at_once(self, model: str) -> Ticket | None:
        """The ticket of a request sent without queueing, when the policy says it goes alone; else None."""
        if self.waiting:
            return None
        in_flight = self.in_flight
        if not coalesce.goes_alone(model, in_flight, sum(in_flight.values()), self.resident(model), self.loading,
                                   self.limits(), self.making_room > 0):
            return None
        in_flight[model] = in_flight.get(model, 0) + 1
        return Ticket(model, coalesce.RESIDENT)

    async def wait(self, model: str) -> Ticket:
        key = next(self._keys)
        future: asyncio.Future[coalesce.Send] = asyncio.get_running_loop().create_future()
        self.waiting[key] = (coalesce.Queued(key, model, self.clock()), future)
        self.decide()
        try:
            send = await future
        except BaseException:
            if self.waiting.pop(key, None) is None and future.done() and not future.cancelled():
                self.finished(self._ticket(future.result()))  # sent as the waiter was cancelled: give it back
            raise
        return self._ticket(send)

    def _ticket(self, send: coalesce.Send) -> Ticket:
        loader = send.key in self._loaders
        self._loaders.discard(send.key)
        return Ticket(send.model, send.reason, send.waited, loading=loader, making_room=loader, started_load=loader)

    def admitted(self, ticket: Ticket) -> None:
        """The request's admission is over (room made, or refused): the resident set is true again."""
        if ticket.making_room:
            ticket.making_room = False
            self.making_room -= 1
            self.decide()

    def answered(self, ticket: Ticket) -> None:
        """Ollama answered the request's headers: a load it started is over (done or failed)."""
        if ticket.loading:
            ticket.loading = False
            self.loading.discard(ticket.model)
            self.decide()

    def finished(self, ticket: Ticket) -> None:
        if ticket._done:
            return
        ticket._done = True
        if ticket.making_room:
            ticket.making_room = False
            self.making_room -= 1
        if ticket.loading:
            ticket.loading = False
            self.loading.discard(ticket.model)
        left = self.in_flight.get(ticket.model, 0) - 1
        if left > 0:
            self.in_flight[ticket.model] = left
        else:
            self.in_flight.pop(ticket.model, None)
        self.decide()

    def decide(self) -> None:
        if not self.waiting:
            return
        queued = [q for q, _ in self.waiting.values()]
        resident = {m for m in {q.model for q in queued} | self.in_flight.keys() if self.resident(m)}
        now = self.clock()
        free = {m for m in {q.model for q in queued} - resident if self.loads_freely(m)}
        plan = coalesce.plan(queued, self.in_flight, resident, self.loading, now, self.limits(), self.making_room > 0,
                             free)
        for send in plan.send:
            _, future = self.waiting.pop(send.key)
            self.in_flight[send.model] = self.in_flight.get(send.model, 0) + 1
            if send.model not in resident and send.model not in self.loading:
                self.loading.add(send.model)
                self._loaders.add(send.key)
                self.making_room += 1
                self.swaps += 1
            if send.reason == coalesce.OVERDUE:
                self.overdue += 1
            future.set_result(send)
        if plan.swap is not None or any(s.reason == coalesce.OVERDUE for s in plan.send):
            log.info("decision: proxy queue", **plan.log_fields(), max_wait=self.limits().max_wait)
        self._arm(plan.next_check, now)

    def _arm(self, at: float | None, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, at - now), self.decide)


class Slot:
    """A request's place in the queue, as an async context manager (a class: a generator-based one costs more
    than the whole decision on the hit path)."""

    __slots__ = ("model", "queue", "ticket")

    def __init__(self, queue: RequestQueue, model: str):
        self.queue = queue
        self.model = model
        self.ticket: Ticket | None = None

    async def __aenter__(self) -> Ticket:
        self.ticket = self.queue.at_once(self.model) or await self.queue.wait(self.model)
        return self.ticket

    async def __aexit__(self, *exc: object) -> None:
        if self.ticket is not None:
            self.queue.finished(self.ticket)
