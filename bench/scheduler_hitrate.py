"""Hit rate of memwarden's model scheduler (LRU, GDSF) on Zipf traces, against Belady and Ollama's own eviction.

Pure simulation, no daemon. Each trace: --models models (default 40), ~70 % specialists of 1–2 GiB (about
1.5 GiB) and the rest bases of 4–8 GiB, popularity Zipf(s) over a random ranking independent of size, replayed
against a --budget VRAM budget (default 24 GiB) one request at a time. A request for a resident model is a hit;
otherwise models are evicted until it fits and it is loaded (a miss; its size counts as bytes loaded).
  lru, gdsf      memwarden.policies.cache, driven as GpuArbiter.ensure drives it: touch, then on a miss
                 set_resident(size) → plan_room → evicted(victim)… → set_resident(True).
  Belady         evict the resident model whose next request is furthest in the future (never again = first).
                 With variable sizes this furthest-next-use-first rule is a heuristic, not the optimum: it
                 ignores size, so a size-aware policy can beat it on hit rate or bytes. Ratios are to it.
  Ollama         its eviction order (server/sched.go, per shared/ollama-api.md): shortest keep_alive first, then
                 by name. Every request here carries the same keep_alive, so that is by name alone; names are
                 assigned at random, independent of size and popularity. keep_alive never expires (requests
                 come faster than 5 min apart). "Ollama, default" also applies OLLAMA_MAX_LOADED_MODELS' default
                 of 3 per GPU.
Hit rates are averaged over every (seed, length) pair for each Zipf exponent; bytes loaded are per 1,000
requests.
"""

from __future__ import annotations

import bisect
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt_ratio, parser, table

from memwarden.policies import cache

GiB = 1024**3
Trace = list[int]
Sizes = list[int]


def make_models(n: int, rng: random.Random) -> tuple[list[str], Sizes]:
    """Names (shuffled, so name order says nothing about size or popularity) and sizes in bytes."""
    n_spec = round(n * 0.7)
    sizes = [int(rng.uniform(1.0, 2.0) * GiB) for _ in range(n_spec)]
    sizes += [int(rng.uniform(4.0, 8.0) * GiB) for _ in range(n - n_spec)]
    rng.shuffle(sizes)  # popularity rank (index) independent of size
    labels = [f"m{i:02d}" for i in range(n)]
    rng.shuffle(labels)
    return labels, sizes


def zipf_trace(n_models: int, length: int, s: float, rng: random.Random) -> Trace:
    weights = [1 / (rank + 1) ** s for rank in range(n_models)]
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    return [min(bisect.bisect_left(cum, rng.random() * total), n_models - 1) for _ in range(length)]


Result = tuple[int, int]  # hits, bytes loaded


def run_memwarden(policy: str, ollama_cap: int | None = None,
                  cap_by_policy: bool = False) -> Callable[[Trace, Sizes, list[str], int], Result]:
    """memwarden's scheduler. With `ollama_cap`, Ollama also holds at most that many models (its
    OLLAMA_MAX_LOADED_MODELS): left alone, Ollama itself evicts the first resident by name when one more loads,
    and memwarden learns it from /api/ps (set_resident False, as GpuArbiter.observe does); with `cap_by_policy`
    memwarden plans the cap too, evicting in its own policy's order."""
    def run(trace: Trace, sizes: Sizes, names: list[str], budget: int) -> Result:
        state = cache.CacheState()
        hits = loaded = 0
        for t, m in enumerate(trace):
            name, size = names[m], sizes[m]
            now = float(t)
            state = cache.touch(state, name, now, size if name not in state.entries else None)
            entry = state.entries[name]
            if entry.resident:
                hits += 1
                continue
            state = cache.set_resident(state, name, False, size)
            room = cache.plan_room(state, name, size, budget, policy)
            if not room.fits:
                raise RuntimeError(f"{name} ({size} B) does not fit a {budget} B budget")
            for victim in room.victims:
                state = cache.evicted(state, victim, policy)
            if ollama_cap is not None:
                if cap_by_policy:
                    order = cache.eviction_order(state, policy, exclude=[name])
                    while len(state.resident()) >= ollama_cap:
                        state = cache.evicted(state, order.pop(0).name, policy)
                else:
                    while len(state.resident()) >= ollama_cap:
                        first = min(e.name for e in state.resident())
                        state = cache.set_resident(state, first, False)
            state = cache.set_resident(state, name, True, size, measured=True)
            loaded += size
        return hits, loaded
    return run


def next_uses(trace: Trace) -> list[int]:
    """For each position, the position of the same model's next request (len(trace) if none)."""
    nxt = [0] * len(trace)
    seen: dict[int, int] = {}
    for t in range(len(trace) - 1, -1, -1):
        nxt[t] = seen.get(trace[t], len(trace))
        seen[trace[t]] = t
    return nxt


def run_belady(trace: Trace, sizes: Sizes, names: list[str], budget: int) -> Result:
    nxt = next_uses(trace)
    resident: dict[int, int] = {}  # model → its next request
    used = hits = loaded = 0
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
        loaded += sizes[m]
    return hits, loaded


def run_ollama(max_loaded: int | None) -> Callable[[Trace, Sizes, list[str], int], Result]:
    def run(trace: Trace, sizes: Sizes, names: list[str], budget: int) -> Result:
        resident: set[int] = set()
        used = hits = loaded = 0
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
            loaded += sizes[m]
        return hits, loaded
    return run


POLICIES: dict[str, Callable[[Trace, Sizes, list[str], int], Result]] = {
    "Belady (furthest next use)": run_belady,
    "memwarden gdsf": run_memwarden("gdsf"),
    "memwarden lru": run_memwarden("lru"),
    "Ollama order, VRAM budget only": run_ollama(None),
    "Ollama default (also ≤ 3 loaded)": run_ollama(3),
    "memwarden gdsf + Ollama's default cap of 3": run_memwarden("gdsf", 3),
    "memwarden lru + Ollama's default cap of 3": run_memwarden("lru", 3),
    "memwarden gdsf planning the cap of 3 itself": run_memwarden("gdsf", 3, cap_by_policy=True),
}


def simulate(exponents: Sequence[float], seeds: Sequence[int], lengths: Sequence[int], n_models: int,
             budget: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in exponents:
        per: dict[str, dict[str, list[float]]] = {p: {"hit_rate": [], "gib_per_1k": []} for p in POLICIES}
        for seed in seeds:
            rng = random.Random(seed)
            names, sizes = make_models(n_models, rng)
            for length in lengths:
                trace = zipf_trace(n_models, length, s, random.Random(f"{seed}-{length}-{s}"))
                for label, run in POLICIES.items():
                    hits, loaded = run(trace, sizes, names, budget)
                    per[label]["hit_rate"].append(hits / length)
                    per[label]["gib_per_1k"].append(loaded / GiB / length * 1000)
        out[str(s)] = {label: {k: sum(v) / len(v) for k, v in d.items()} | {"runs": len(d["hit_rate"])}
                       for label, d in per.items()}
    return out


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=40, help="number of models (default 40)")
    p.add_argument("--budget-gib", type=float, default=24.0, help="VRAM budget in GiB (default 24)")
    p.add_argument("--exponents", type=float, nargs="+", default=[1.0, 1.2], help="Zipf s values (default 1.0 1.2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="random seeds (default 1 2 3)")
    p.add_argument("--lengths", type=int, nargs="+", default=[5000, 20000],
                   help="trace lengths in requests (default 5000 20000)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    budget = int(args.budget_gib * GiB)
    started = time.monotonic()
    results = simulate(args.exponents, args.seeds, args.lengths, args.models, budget)
    elapsed = time.monotonic() - started

    headers = ["policy"]
    for s in args.exponents:
        headers += [f"hit rate s={s}", "÷ Belady", f"GiB loaded /1k req s={s}", "÷ Belady"]
    rows = []
    for label in POLICIES:
        row = [label]
        for s in args.exponents:
            r, b = results[str(s)][label], results[str(s)]["Belady (furthest next use)"]
            row += [f"{r['hit_rate'] * 100:.1f} %", fmt_ratio(r["hit_rate"] / b["hit_rate"]),
                    f"{r['gib_per_1k']:.0f}", fmt_ratio(r["gib_per_1k"] / b["gib_per_1k"])]
        rows.append(row)
    runs = len(args.seeds) * len(args.lengths)
    text = table(headers, rows)
    text += (f"\n\n{args.models} models (70 % specialists 1–2 GiB, 30 % bases 4–8 GiB), budget "
             f"{args.budget_gib:g} GiB, Zipf ranks independent of size; each figure is the mean of {runs} traces "
             f"(seeds {', '.join(map(str, args.seeds))} × lengths {', '.join(map(str, args.lengths))} requests), "
             f"cold start included. Belady here is the furthest-next-use heuristic (sizes ignored), so a "
             f"size-aware policy may beat it. Simulated in {elapsed:.1f} s.")
    emit("scheduler hit rate", text, {"exponents": args.exponents, "seeds": args.seeds, "lengths": args.lengths,
                                      "models": args.models, "budget_gib": args.budget_gib, "results": results},
         args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
