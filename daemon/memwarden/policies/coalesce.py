"""The coalescing policy: which queued proxy requests go to Ollama now, and which model to swap in next.

Pure: the queue (requests not yet sent, oldest first), the requests in flight per model, the resident models,
the models whose load is under way, `now` and the limits in; a Plan out (what to send, each with its reason;
why the rest wait; when to look again).

Ollama serves its queue in arrival order, and each request for a model that is not loaded is a swap, so a burst
A B A A C costs up to four loads where three would do. The proxy keeps the requests Ollama need not see yet and
sends them in this order:
1. `overdue`: a request that has waited proxy.max_wait goes now, whatever it costs (no model starves), with
   the rest of its model's queue right behind it (`join`), so that Ollama serves them all on one load;
2. `resident`: requests for resident models, up to ollama.num_parallel in flight per model (Ollama's own
   OLLAMA_NUM_PARALLEL: more would only queue inside Ollama, where they can no longer be reordered); while no
   request for another model waits and no load is under way there is nothing to reorder, and they all go (an
   Ollama configured for more than ollama.num_parallel says is then never held back by the proxy);
3. `join`: requests for a model whose load is under way ride on that load;
4. `swap`: one load at a time, and only once no resident model has work queued or in flight (the load could
   evict that model, and its next requests would swap it back): the model of the oldest queued request, with
   its whole group. A model that loads into room to spare (`free`: its load evicts nothing) need not wait for
   the resident models' work, since nothing it does can swap them out: the oldest such goes at once.
While a load's room is being made (the arbiter evicting for it), nothing but overdue requests and those riding
on that load is sent: a request for a model about to be evicted would load it again. Never more than
ollama.max_queue requests are in flight (Ollama answers 503 beyond its queue).

The wait that max_wait bounds is the time in the proxy's queue, before the request is sent to Ollama.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OVERDUE = "overdue"
RESIDENT = "resident"
JOIN = "join"
SWAP = "swap"

# Why the requests left in the queue wait (the first rule that held them).
FULL = "full"  # ollama.max_queue requests in flight
BUSY = "busy"  # their model has ollama.num_parallel in flight
LOADING = "loading"  # another model's load is under way
RESIDENT_WORK = "resident_work"  # resident models still have requests queued or in flight
MAKING_ROOM = "making_room"  # the arbiter is evicting for a load


@dataclass(frozen=True)
class Limits:
    max_wait: float  # proxy.max_wait, seconds
    per_model: int  # ollama.num_parallel
    total: int  # ollama.max_queue


@dataclass(frozen=True)
class Queued:
    key: int
    model: str
    since: float


@dataclass(frozen=True)
class Send:
    key: int
    model: str
    reason: str  # overdue | resident | join | swap
    waited: float


@dataclass(frozen=True)
class Plan:
    send: tuple[Send, ...]
    swap: str | None  # the model whose load this plan starts
    held: int  # requests left in the queue
    held_by: str | None  # full | busy | loading | resident_work, when some are held
    next_check: float | None  # when the oldest held request becomes overdue
    in_flight: int  # after this plan's sends

    def log_fields(self) -> dict[str, Any]:
        return {"decision": "proxy.coalesce", "sent": [(s.model, s.reason, round(s.waited, 3)) for s in self.send],
                "swap": self.swap, "held": self.held, "held_by": self.held_by, "in_flight": self.in_flight}


def goes_alone(model: str, in_flight: Mapping[str, int], total: int, resident: bool, loading: Collection[str],
               limits: Limits, making_room: bool = False) -> bool:
    """Whether plan() would send a request for `model`, arriving at an empty queue, at once as `resident`: the
    proxy's common case, answered without building a queue and a plan. `total` is the sum of `in_flight`.
    False whenever the plan could say anything else (it is then asked)."""
    if making_room or not resident or model in loading or total >= limits.total or not limits.max_wait > 0:
        return False
    # With no load under way nothing can be reordered around it: num_parallel holds nothing back (rule 2).
    return not loading or in_flight.get(model, 0) < max(1, limits.per_model)


def plan(queue: Sequence[Queued], in_flight: Mapping[str, int], resident: Collection[str],
         loading: Collection[str], now: float, limits: Limits, making_room: bool = False,
         free: Collection[str] = ()) -> Plan:
    flying = dict(in_flight)
    total = sum(flying.values())
    loads = set(loading)
    per_model = max(1, limits.per_model)
    sent: list[Send] = []
    taken: set[int] = set()
    swap: str | None = None
    held_by: str | None = None

    def send(q: Queued, reason: str) -> None:
        nonlocal total
        sent.append(Send(q.key, q.model, reason, now - q.since))
        taken.add(q.key)
        flying[q.model] = flying.get(q.model, 0) + 1
        total += 1

    for q in queue:  # oldest first, so the overdue ones lead
        if now < q.since + limits.max_wait or total >= limits.total:  # next_check's sum: due at it exactly
            break
        if q.key in taken:
            continue
        if q.model not in resident and q.model not in loads:
            loads.add(q.model)
            swap = swap or q.model
        send(q, OVERDUE)
        for other in queue:  # its whole group right behind it, so that Ollama serves it on one load
            if other.model == q.model and other.key not in taken and total < limits.total:
                send(other, OVERDUE if now >= other.since + limits.max_wait else JOIN)
    rest = [q for q in queue if q.key not in taken]
    resident_waiting = any(n > 0 and m in resident for m, n in flying.items())
    if not loads and all(q.model in resident for q in rest):
        per_model = limits.total  # nothing to reorder them with, and no load they could be evicted by
    for q in rest:
        if total >= limits.total:
            held_by = FULL
            break
        if q.model in resident and q.model not in loads:
            if making_room:
                held_by = held_by or MAKING_ROOM
            elif flying.get(q.model, 0) < per_model:
                send(q, RESIDENT)
            else:
                resident_waiting = True
                held_by = held_by or BUSY
        elif q.model in loads:
            if flying.get(q.model, 0) < per_model:
                send(q, JOIN)
            else:
                held_by = held_by or BUSY
    rest = [q for q in rest if q.key not in taken]
    resident_waiting = resident_waiting or any(s.reason == RESIDENT for s in sent)
    pending_swap = [q for q in rest if q.model not in resident and q.model not in loads]
    if pending_swap and total < limits.total:
        if making_room:
            held_by = MAKING_ROOM
        elif loads:
            held_by = LOADING
        elif resident_waiting and not any(q.model in free for q in pending_swap):
            held_by = RESIDENT_WORK
        else:
            swap = next(q.model for q in pending_swap if q.model in free) if resident_waiting \
                else pending_swap[0].model
            for q in pending_swap:
                if q.model == swap and flying.get(swap, 0) < per_model and total < limits.total:
                    send(q, JOIN if swap in loads else SWAP)
                    loads.add(swap)
            rest = [q for q in rest if q.key not in taken]
            if rest:
                held_by = BUSY if all(q.model == swap or q.model in resident for q in rest) \
                    else RESIDENT_WORK if resident_waiting else LOADING
    elif pending_swap:
        held_by = FULL
    if not rest:
        return Plan(tuple(sent), swap, 0, None, None, total)
    return Plan(tuple(sent), swap, len(rest), held_by, min(q.since for q in rest) + limits.max_wait, total)
