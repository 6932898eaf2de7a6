"""Hit rate and load-stall seconds of memwarden's model scheduler on shifting demand, against Belady and Ollama.

Pure, seeded simulation, no daemon: the same figures on every run. 20 models of 1.5–4 GB (the "mixed sizes"
family: 1–8 GB) under a 12 GB VRAM budget, one request at a time. A request for a resident model is a hit;
otherwise models are evicted until it fits and it is loaded: a miss, and the user waits for the load,
1 s + size / 2 GB/s (the load-stall seconds).
Trace families (--length requests each, averaged over --seeds):
  zipf s         popularity Zipf(s) over a random ranking, s = 0.8, 1.0, 1.2
  drift          a working set of 6 models (Zipf 1.0 inside it) that slides one model every 400 requests
  reshuffle      Zipf 1.0 whose ranking is drawn anew every 3,000 requests
  sessions       runs of one model (mean 30 requests), the model of each run Zipf 1.0
  tenants        a steady tenant (Zipf 1.0 over 10 models) and a bursty one (its own 10 models, bursts of 300
                 requests every 1,000, interleaved half and half with the steady one)
  mixed sizes    Zipf 1.0 over 20 models of 1–8 GB
Policies:
  memwarden X    memwarden.policies.cache with policy X, driven as GpuArbiter.ensure drives it: touch, then on a
                 miss set_resident(size) → plan_room → evicted(victim)… → set_resident(True), and the load's
                 time fed back (note_load_time), as the arbiter measures it.
  Belady         evict the resident model whose next request is furthest in the future (never again first),
                 sizes ignored but for ties: with variable sizes a heuristic, not the optimum. Ratios are to it.
  Ollama         its own order (server/sched.go, shared/ollama-api.md): shortest keep_alive first, then by name;
                 every request has the same keep_alive, so by name alone (names shuffled, independent of size and
                 popularity); "Ollama default" also keeps OLLAMA_MAX_LOADED_MODELS' default of 3.
  W-TinyLFU      an admission scheme (Caffeine's): a 1 % window LRU, then a frequency contest into an SLRU
                 (bench/_yardsticks.py).
  known popularity (A0)  evicts by the popularity each request was drawn from × load seconds ÷ size: no
                 future, but the law of the next request, which a policy can only estimate from past requests.
                 For independent requests the best online policy up to sizes: the mark to approach.
Decision time: memwarden's state work per request (the steps above) with 10,000 models, Zipf 1.0, p50/p99.
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt_ratio, parser, percentile, table
from _yardsticks import Popularity, run_known_popularity, run_wtinylfu

from memwarden.policies import cache

GB = 10**9
LOAD_FIXED_S = 1.0
LOAD_BYTES_PER_S = 2 * GB
Trace = list[int]
Workload = tuple[Trace, Popularity]  # the requests, and the law each was drawn from
Sizes = list[int]
Result = tuple[int, float]  # hits, load-stall seconds
Runner = Callable[[Trace, Sizes, list[str], int, Popularity], Result]


def load_seconds(size: int) -> float:
    return LOAD_FIXED_S + size / LOAD_BYTES_PER_S


def make_models(n: int, low_gb: float, high_gb: float, rng: random.Random) -> tuple[list[str], Sizes]:
    """Names (shuffled, so name order says nothing about size or popularity) and sizes in bytes."""
    sizes = [int(rng.uniform(low_gb, high_gb) * GB) for _ in range(n)]
    labels = [f"m{i:02d}" for i in range(n)]
    rng.shuffle(labels)
    return labels, sizes


class Zipf:
    def __init__(self, n: int, s: float):
        self.cum: list[float] = []
        total = 0.0
        for rank in range(n):
            total += 1 / (rank + 1) ** s
            self.cum.append(total)
        self.n = n

    def draw(self, rng: random.Random) -> int:
        return min(bisect.bisect_left(self.cum, rng.random() * self.cum[-1]), self.n - 1)

    def p(self, rank: int) -> float:
        """The probability of drawing `rank` (0 outside the ranks)."""
        if not 0 <= rank < self.n:
            return 0.0
        return (self.cum[rank] - (self.cum[rank - 1] if rank else 0.0)) / self.cum[-1]


def positions(ranking: list[int]) -> list[int]:
    """Each model's place in `ranking`."""
    out = [0] * len(ranking)
    for place, model in enumerate(ranking):
        out[model] = place
    return out


def zipf_trace(n: int, length: int, s: float, rng: random.Random) -> Workload:
    ranking = list(range(n))
    rng.shuffle(ranking)
    z, place = Zipf(n, s), positions(ranking)
    return [ranking[z.draw(rng)] for _ in range(length)], lambda t, m: z.p(place[m])


def drift_trace(n: int, length: int, rng: random.Random, width: int = 6, every: int = 400) -> Workload:
    z = Zipf(width, 1.0)
    ranking = list(range(n))
    rng.shuffle(ranking)
    place = positions(ranking)
    return ([ranking[(t // every + z.draw(rng)) % n] for t in range(length)],
            lambda t, m: z.p((place[m] - t // every) % n))


def reshuffle_trace(n: int, length: int, rng: random.Random, phase: int = 3000) -> Workload:
    z, ranking, out, places = Zipf(n, 1.0), list(range(n)), [], []
    for t in range(length):
        if t % phase == 0:
            rng.shuffle(ranking)
            places.append(positions(ranking))
        out.append(ranking[z.draw(rng)])
    return out, lambda t, m: z.p(places[t // phase][m])


MEAN_RUN = 30  # sessions' mean run length, in requests


def run_length(rng: random.Random, mean_run: float = MEAN_RUN) -> int:
    """A session's run length: an exponential of mean `mean_run`, rounded, at least 1."""
    return max(1, round(rng.expovariate(1 / mean_run)))


def sessions_trace(n: int, length: int, rng: random.Random, mean_run: float = MEAN_RUN) -> Workload:
    ranking = list(range(n))
    rng.shuffle(ranking)
    return sessions_of(ranking, length, rng, mean_run)


def sessions_of(ranking: list[int], length: int, rng: random.Random, mean_run: float = MEAN_RUN) -> Workload:
    """Runs of one model, each run's model drawn from Zipf 1.0 over `ranking`; the popularity is that of a run's
    model, as a run's first request is drawn."""
    z, place, out = Zipf(len(ranking), 1.0), positions(ranking), []
    while len(out) < length:
        out += [ranking[z.draw(rng)]] * run_length(rng, mean_run)
    return out[:length], lambda t, m: z.p(place[m])


def tenants_trace(n: int, length: int, rng: random.Random, burst: int = 300, period: int = 1000) -> Workload:
    half = n // 2
    steady, bursty = Zipf(half, 1.0), Zipf(n - half, 1.0)
    ranking = list(range(n))
    rng.shuffle(ranking)
    place = positions(ranking)
    out = []
    for t in range(length):
        if t % period < burst and rng.random() < 0.5:
            out.append(ranking[half + bursty.draw(rng)])
        else:
            out.append(ranking[steady.draw(rng)])

    def popularity(t: int, m: int) -> float:
        share = 0.5 if t % period < burst else 0.0
        return steady.p(place[m]) * (1 - share) + bursty.p(place[m] - half) * share
    return out, popularity


def run_memwarden(policy: str) -> Runner:
    def run(trace: Trace, sizes: Sizes, names: list[str], budget: int, popularity: Popularity) -> Result:
        state = cache.CacheState()
        hits, stall = 0, 0.0
        for t, m in enumerate(trace):
            state, hit = memwarden_step(state, policy, names[m], sizes[m], float(t), budget)
            if hit:
                hits += 1
            else:
                stall += load_seconds(sizes[m])
        return hits, stall
    return run


def memwarden_step(state: cache.CacheState, policy: str, name: str, size: int, now: float,
                   budget: int) -> tuple[cache.CacheState, bool]:
    state = cache.touch(state, name, now, size if name not in state.entries else None)
    if state.entries[name].resident:
        return state, True
    state = cache.set_resident(state, name, False, size)
    room = cache.plan_room(state, name, size, budget, policy)
    if not room.fits:
        raise RuntimeError(f"{name} ({size} B) does not fit a {budget} B budget")
    for victim in room.victims:
        state = cache.evicted(state, victim, policy)
    state = cache.set_resident(state, name, True, size, measured=True)
    return cache.note_load_time(state, name, load_seconds(size)), False


def next_uses(trace: Trace) -> list[int]:
    """For each position, the position of the same model's next request (len(trace) if none)."""
    nxt = [0] * len(trace)
    seen: dict[int, int] = {}
    for t in range(len(trace) - 1, -1, -1):
        nxt[t] = seen.get(trace[t], len(trace))
        seen[trace[t]] = t
    return nxt


def run_belady(trace: Trace, sizes: Sizes, names: list[str], budget: int, popularity: Popularity) -> Result:
    nxt = next_uses(trace)
    resident: dict[int, int] = {}  # model → its next request
    used, hits, stall = 0, 0, 0.0
    for t, m in enumerate(trace):
        if m in resident:
            hits += 1
            resident[m] = nxt[t]
            continue
        while used + sizes[m] > budget:
            victim = max(resident, key=lambda r: (resident[r], sizes[r]))
            used -= sizes[victim]
            del resident[victim]
        resident[m] = nxt[t]
        used += sizes[m]
        stall += load_seconds(sizes[m])
    return hits, stall


def run_ollama(max_loaded: int | None) -> Runner:
    def run(trace: Trace, sizes: Sizes, names: list[str], budget: int, popularity: Popularity) -> Result:
        resident: set[int] = set()
        used, hits, stall = 0, 0, 0.0
        for m in trace:
            if m in resident:
                hits += 1
                continue
            # ByDurationAndName: equal keep_alive everywhere, so the victim is the first by name.
            while used + sizes[m] > budget or (max_loaded is not None and len(resident) >= max_loaded):
                victim = min(resident, key=lambda r: names[r])
                used -= sizes[victim]
                resident.discard(victim)
            resident.add(m)
            used += sizes[m]
            stall += load_seconds(sizes[m])
        return hits, stall
    return run


BELADY = "Belady (furthest next use)"
POLICIES: dict[str, Runner] = {BELADY: run_belady}
POLICIES |= {f"memwarden {p}": run_memwarden(p) for p in cache.POLICIES}
POLICIES |= {"Ollama order, VRAM budget only": run_ollama(None), "Ollama default (also ≤ 3 loaded)": run_ollama(3)}
POLICIES |= {"W-TinyLFU": lambda trace, sizes, names, budget, popularity: run_wtinylfu(
    trace, sizes, load_seconds, budget, len(sizes))}
KNOWN = "known popularity (A0)"
POLICIES |= {KNOWN: lambda trace, sizes, names, budget, popularity: run_known_popularity(
    trace, popularity, sizes, load_seconds, budget)}

TraceMaker = Callable[[int, int, random.Random], Workload]
FAMILIES: dict[str, tuple[TraceMaker, float, float]] = {  # trace, model sizes (GB, low–high)
    "zipf s=0.8": (lambda n, k, r: zipf_trace(n, k, 0.8, r), 1.5, 4.0),
    "zipf s=1.0": (lambda n, k, r: zipf_trace(n, k, 1.0, r), 1.5, 4.0),
    "zipf s=1.2": (lambda n, k, r: zipf_trace(n, k, 1.2, r), 1.5, 4.0),
    "drift": (drift_trace, 1.5, 4.0),
    "reshuffle": (reshuffle_trace, 1.5, 4.0),
    "sessions": (sessions_trace, 1.5, 4.0),
    "tenants": (tenants_trace, 1.5, 4.0),
    "mixed sizes": (lambda n, k, r: zipf_trace(n, k, 1.0, r), 1.0, 8.0),
}


def simulate(seeds: Sequence[int], length: int, n_models: int, budget: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family, (make, low, high) in FAMILIES.items():
        per: dict[str, dict[str, list[float]]] = {p: {"hit_rate": [], "stall_s_per_1k": []} for p in POLICIES}
        for seed in seeds:
            names, sizes = make_models(n_models, low, high, random.Random(f"models-{seed}-{low}-{high}"))
            trace, popularity = make(n_models, length, random.Random(f"{family}-{seed}-{length}"))
            for label, run in POLICIES.items():
                hits, stall = run(trace, sizes, names, budget, popularity)
                per[label]["hit_rate"].append(hits / length)
                per[label]["stall_s_per_1k"].append(stall / length * 1000)
        out[family] = {label: {k: sum(v) / len(v) for k, v in d.items()} for label, d in per.items()}
    return out


def add_trace_options(p: argparse.ArgumentParser) -> None:
    """The options that choose the traces, shared by every bench that replays them."""
    p.add_argument("--models", type=int, default=20, help="number of models (default 20)")
    p.add_argument("--budget-gb", type=float, default=12.0, help="VRAM budget in GB (default 12)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="random seeds (default 1 2 3)")
    p.add_argument("--length", type=int, default=20000, help="requests per trace (default 20000)")


def decision_times(n_models: int, budget: int, requests: int, warmup: int) -> dict[str, dict[str, float]]:
    """Per-request state work (µs) with `n_models` tracked, for each memwarden policy."""
    rng = random.Random("decision")
    names, sizes = make_models(n_models, 1.5, 4.0, rng)
    trace, _ = zipf_trace(n_models, requests + warmup, 1.0, rng)
    out = {}
    for policy in cache.POLICIES:
        state = cache.CacheState.of(cache.Entry(n, s) for n, s in zip(names, sizes, strict=True))
        samples, misses = [], 0
        for t, m in enumerate(trace):
            t0 = time.perf_counter_ns()
            state, hit = memwarden_step(state, policy, names[m], sizes[m], float(t), budget)
            if t >= warmup:
                samples.append((time.perf_counter_ns() - t0) / 1000)
                misses += not hit
        out[policy] = {"p50": percentile(samples, 50), "p99": percentile(samples, 99),
                       "miss_rate": misses / requests}
    return out


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    add_trace_options(p)
    p.add_argument("--decision-models", type=int, default=10000, help="models for the decision time (10000)")
    p.add_argument("--decision-requests", type=int, default=2000, help="timed requests (default 2000)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    budget = int(args.budget_gb * GB)
    started = time.monotonic()
    results = simulate(args.seeds, args.length, args.models, budget)
    elapsed = time.monotonic() - started
    timing = decision_times(args.decision_models, budget, args.decision_requests, 200)

    headers = ["family"] + [label for label in POLICIES if label != BELADY]
    hit_rows, stall_rows = [], []
    for family, res in results.items():
        b = res[BELADY]
        hit_rows.append([f"{family} (Belady {b['hit_rate'] * 100:.1f} %)"]
                        + [fmt_ratio(res[label]["hit_rate"] / b["hit_rate"]) for label in headers[1:]])
        stall_rows.append([f"{family} (Belady {b['stall_s_per_1k']:.0f} s)"]
                          + [fmt_ratio(res[label]["stall_s_per_1k"] / b["stall_s_per_1k"]) for label in headers[1:]])
    text = "hit rate ÷ Belady's\n\n" + table(headers, hit_rows)
    text += "\n\nload-stall seconds per 1,000 requests ÷ Belady's\n\n" + table(headers, stall_rows)
    text += f"\n\ndecision time per request, µs, with {args.decision_models:,} models\n\n" + table(
        ["policy", "p50", "p99", "miss rate"],
        [[pol, f"{t['p50']:.1f}", f"{t['p99']:.1f}", f"{t['miss_rate'] * 100:.1f} %"] for pol, t in timing.items()])
    text += (f"\n\n{args.models} models, budget {args.budget_gb:g} GB; each figure is the mean over seeds "
             f"{', '.join(map(str, args.seeds))} of {args.length:,}-request traces, cold start included. "
             f"Simulated in {elapsed:.1f} s.")
    emit("scheduler hit rate", text, {"seeds": args.seeds, "length": args.length, "models": args.models,
                                      "budget_gb": args.budget_gb, "results": results, "decision_us": timing},
         args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
