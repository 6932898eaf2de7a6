"""Request coalescing on a bursty two-tenant trace: swaps per 1,000 requests and waits, with and without.

A pure, deterministic replay (no daemon, no sockets): a discrete-event model of Ollama's scheduler (one pending
queue served in arrival order, as processPending does: a request whose model is not loaded holds the queue until
an idle model is evicted and its own is loaded; OLLAMA_NUM_PARALLEL requests served at once per model), fed
  FIFO (baseline)  every request sent to Ollama as it arrives, as with no proxy;
  coalesced        requests held in the proxy and sent by memwarden.policies.coalesce.plan, the policy the
                   proxy runs, at each arrival, completion, load and deadline.
The trace: two tenants, each with its own three models (1.5-4 GB), sending bursts (5-40 requests at ~8/s, model
picked 60/30/10 within the tenant) at exponential gaps (mean --gap); bursts of the two tenants overlap. A load takes
1 s + size / 2 GB/s; a request's service time is exponential, mean --service seconds.

Reported: swaps (loads) per 1,000 requests; the wait in the proxy's queue (arrival to sent: the figure
proxy.max_wait bounds, zero without the proxy); the wait to service (arrival to the start of the answer: the
queue, Ollama's pending queue and any load) at p50/p99. Goals: coalesced swaps <= 0.5x FIFO's, p99 queue wait
<= max_wait.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, parser, percentile, table

from memwarden.policies import coalesce

GB = 1e9


@dataclass
class Req:
    key: int
    model: str
    arrived: float
    sent: float | None = None
    started: float | None = None


def trace(n: int, seed: int, gap: float) -> tuple[list[Req], dict[str, float]]:
    rng = random.Random(seed)
    sizes = {f"t{t}m{i}": rng.uniform(1.5, 4.0) * GB for t in range(2) for i in range(3)}
    arrivals: list[tuple[float, str]] = []
    for tenant in range(2):
        t, count = rng.uniform(0, 10), 0
        while count < (n + tenant) // 2:
            for _ in range(min(rng.randint(5, 40), (n + tenant) // 2 - count)):
                arrivals.append((t, f"t{tenant}m{rng.choices((0, 1, 2), (0.6, 0.3, 0.1))[0]}"))
                t += rng.expovariate(8.0)
                count += 1
            t += rng.expovariate(1 / gap)
    arrivals.sort()
    return [Req(i, m, t) for i, (t, m) in enumerate(arrivals[:n])], sizes


@dataclass
class Ollama:
    """processPending in arrival order; runners of at most `room` models; num_parallel slots each."""

    sizes: dict[str, float]
    room: int
    num_parallel: int
    service: dict[int, float]
    pending: deque[Req] = field(default_factory=deque)
    loaded: dict[str, int] = field(default_factory=dict)  # model -> requests in flight (serving or queued)
    serving: dict[str, int] = field(default_factory=dict)
    runner_queue: dict[str, deque[Req]] = field(default_factory=dict)
    last_used: dict[str, float] = field(default_factory=dict)
    loading: str | None = None
    loads: int = 0

    def step(self, now: float, events: list) -> None:
        while self.pending and self.loading is None:
            head = self.pending[0]
            if head.model in self.loaded:
                self.pending.popleft()
                self.loaded[head.model] += 1
                self.runner_queue[head.model].append(head)
                self._serve(head.model, now, events)
                continue
            if len(self.loaded) >= self.room:
                idle = [m for m, n in self.loaded.items() if n == 0]
                if not idle:
                    return  # wait for a runner to go idle
                victim = min(idle, key=lambda m: self.last_used.get(m, 0.0))
                del self.loaded[victim], self.serving[victim], self.runner_queue[victim]
            self.loading = head.model
            self.loads += 1
            heapq.heappush(events, (now + 1.0 + self.sizes[head.model] / (2 * GB), 1, "loaded", head.model))

    def on_loaded(self, model: str, now: float, events: list) -> None:
        self.loading = None
        self.loaded[model] = 0
        self.serving[model] = 0
        self.runner_queue[model] = deque()

    def _serve(self, model: str, now: float, events: list) -> None:
        q = self.runner_queue[model]
        while q and self.serving[model] < self.num_parallel:
            r = q.popleft()
            r.started = now
            self.serving[model] += 1
            heapq.heappush(events, (now + self.service[r.key], 0, "done", r))

    def on_done(self, r: Req, now: float, events: list) -> None:
        self.serving[r.model] -= 1
        self.loaded[r.model] -= 1
        self.last_used[r.model] = now
        self._serve(r.model, now, events)


def replay(reqs: list[Req], sizes: dict[str, float], service: dict[int, float], room: int, num_parallel: int,
           max_wait: float | None) -> dict:
    reqs = [Req(r.key, r.model, r.arrived) for r in reqs]
    ollama = Ollama(sizes, room, num_parallel, service)
    events: list = [(r.arrived, 2, "arrive", r) for r in reqs]
    heapq.heapify(events)
    queue: dict[int, coalesce.Queued] = {}
    by_key = {r.key: r for r in reqs}
    in_flight: dict[str, int] = {}
    loading: set[str] = set()
    limits = coalesce.Limits(max_wait or 0.0, num_parallel, 512)
    timer: float | None = None

    def send(r: Req, now: float) -> None:
        r.sent = now
        in_flight[r.model] = in_flight.get(r.model, 0) + 1
        ollama.pending.append(r)

    while events:
        now, _, kind, item = heapq.heappop(events)
        if kind == "arrive":
            if max_wait is None:
                send(item, now)
            else:
                queue[item.key] = coalesce.Queued(item.key, item.model, item.arrived)
        elif kind == "loaded":
            ollama.on_loaded(item, now, events)
            loading.discard(item)
        elif kind == "done":
            ollama.on_done(item, now, events)
            in_flight[item.model] -= 1
        elif kind == "timer" and timer != now:
            continue
        if max_wait is not None and queue:
            resident = set(ollama.loaded)
            plan = coalesce.plan(list(queue.values()), in_flight, resident, loading | (
                {ollama.loading} if ollama.loading else set()), now, limits)
            for s in plan.send:
                queue.pop(s.key)
                r = by_key[s.key]
                if r.model not in resident:
                    loading.add(r.model)
                send(r, now)
            if plan.next_check is not None and plan.next_check != timer:
                timer = plan.next_check
                heapq.heappush(events, (timer, 3, "timer", None))
        ollama.step(now, events)
    queue_waits = [r.sent - r.arrived for r in reqs]
    service_waits = [r.started - r.arrived for r in reqs]
    return {"swaps_per_1000": 1000 * ollama.loads / len(reqs), "loads": ollama.loads,
            "queue_wait_p50": percentile(queue_waits, 50), "queue_wait_p99": percentile(queue_waits, 99),
            "queue_wait_max": max(queue_waits),
            "service_wait_p50": percentile(service_waits, 50), "service_wait_p99": percentile(service_waits, 99)}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--service", type=float, default=0.5, help="mean service time of a request, seconds")
    p.add_argument("--gap", type=float, default=90.0, help="mean pause between a tenant's bursts, seconds")
    p.add_argument("--max-wait", type=float, default=5.0, help="proxy.max_wait, seconds")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    reqs, sizes = trace(args.requests, args.seed, args.gap)
    rng = random.Random(args.seed + 1)
    service = {r.key: rng.expovariate(1 / args.service) for r in reqs}
    rows, results = [], {}
    for room in (1, 2):
        for num_parallel in (1, 4):
            fifo = replay(reqs, sizes, service, room, num_parallel, None)
            co = replay(reqs, sizes, service, room, num_parallel, args.max_wait)
            key = f"room{room}_parallel{num_parallel}"
            results[key] = {"fifo": fifo, "coalesced": co}
            for label, r in (("FIFO (Ollama's order)", fifo), (f"coalesced, max_wait {args.max_wait:g} s", co)):
                rows.append([f"{room}", f"{num_parallel}", label, fmt(r["swaps_per_1000"]),
                             fmt_ratio(r["swaps_per_1000"] / fifo["swaps_per_1000"]),
                             fmt(r["queue_wait_p50"], 2), fmt(r["queue_wait_p99"], 2), fmt(r["queue_wait_max"], 2),
                             fmt(r["service_wait_p50"], 2), fmt(r["service_wait_p99"], 2)])
    text = table(["models resident at once", "num_parallel", "order", "swaps / 1,000 req", "÷ FIFO",
                  "queue wait p50 (s)", "p99 (s)", "max (s)", "wait to service p50 (s)", "p99 (s)"], rows)
    span = reqs[-1].arrived - reqs[0].arrived
    text += (f"\n\n{len(reqs):,} requests over {span / 3600:.1f} h (seed {args.seed}), mean service "
             f"{args.service:g} s; models {', '.join(f'{m} {s / GB:.1f} GB' for m, s in sorted(sizes.items()))}.")
    results.update(requests=len(reqs), seed=args.seed, max_wait=args.max_wait, service=args.service)
    emit("Request coalescing on the bursty two-tenant trace (pure replay)", text, results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
