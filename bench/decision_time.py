"""Scheduler decision time per request with 10,000 adapters, against a plain dict update of the same entries.

A cache state of --entries entries (default 10,000; 70 % specialists of 1–2 GiB, 30 % bases of 4–8 GiB, random
recency and hit counts), some resident within a --budget-gib budget (default 24 GiB), timed call by call:
  hit                cache.touch on a resident model (the state carried from call to call, as the arbiter does);
  miss decision      cache.plan_room for a model not resident (each of cache.POLICIES);
  miss, state work   what GpuArbiter.ensure does to the state on a miss: touch, set_resident(size), plan_room,
                     evicted(victim)…, set_resident(True);
  arbiter hit path   GpuArbiter.resident + GpuArbiter.note_use (what the proxy runs for a resident model);
and, once per sample pass or per start rather than per request, GpuArbiter.observe (the resident models seen in
/api/ps) and GpuArbiter._load_cache (the adapters table read at start).
Baselines, same run: a plain dict update `d[name] = entry` of a 10,000-entry dict; the same with the new Entry
built by dataclasses.replace (touch's per-entry work without any copy); and the copy `{**d, name: entry}` of the
whole table that each change cost before the state became a persistent map.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, parser, percentile, table

from memwarden.arbiter.arbiter import GpuArbiter
from memwarden.config.loader import parse_config
from memwarden.policies import cache
from memwarden.snapshots import LoadedModel
from memwarden.state.db import open_state

GiB = 1024**3


def build_state(n: int, budget: int, rng: random.Random) -> tuple[cache.CacheState, list[str], list[str]]:
    """A state of n entries built in one go (not through with_entry, which is quadratic); resident names first
    in random order until the budget is full, each with random uses for every policy's counts (demand's
    switches among them). Returns (state, resident names, non-resident names)."""
    inflation, switches = 1e-9, 100_000
    entries: dict[str, cache.Entry] = {}
    order = list(range(n))
    rng.shuffle(order)
    used = 0
    resident, other = [], []
    for i in order:
        name = f"adapter-{i:05d}:latest"
        size = int((rng.uniform(1.0, 2.0) if rng.random() < 0.7 else rng.uniform(4.0, 8.0)) * GiB)
        hits = rng.randint(1, 1000)
        is_resident = used + size <= budget and len(resident) < n
        if is_resident:
            used += size
            resident.append(name)
        else:
            other.append(name)
        entries[name] = cache.Entry(name, size, True, is_resident, False, rng.uniform(0, 1e6), hits,
                                    inflation + hits / size, 0 if is_resident else None, freq=hits / 10,
                                    tick=rng.randint(0, switches), visits=hits / 20,
                                    visit_switch=rng.randint(0, switches))
    return cache.CacheState(MappingProxyType(entries), inflation, switches, switches=switches), resident, other


def timed(fn: Callable[[int], Any], calls: int, warmup: int) -> list[float]:
    """µs per call of fn(i), i counting up through warm-up and timed calls."""
    for i in range(warmup):
        fn(i)
    out = []
    clock = time.perf_counter_ns
    for i in range(warmup, warmup + calls):
        t0 = clock()
        fn(i)
        out.append((clock() - t0) / 1000)
    return out


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_us": round(percentile(values, 50), 2), "p99_us": round(percentile(values, 99), 2),
            "mean_us": round(sum(values) / len(values), 2)}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=10_000, help="adapters in the cache state (default 10000)")
    p.add_argument("--budget-gib", type=float, default=24.0, help="VRAM budget for the resident ones (default 24)")
    p.add_argument("--calls", type=int, default=2000, help="timed calls per row (default 2000)")
    p.add_argument("--warmup", type=int, default=100, help="untimed calls first (default 100)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    rng = random.Random(args.seed)
    budget = int(args.budget_gib * GiB)
    base, resident, other = build_state(args.entries, budget, rng)
    picks_res = [rng.choice(resident) for _ in range(args.calls + args.warmup)]
    picks_other = [rng.choice(other) for _ in range(args.calls + args.warmup)]
    rows: dict[str, dict[str, Any]] = {}

    # ---- baselines: the same 10,000 entries in a plain dict ----
    plain = dict(base.entries)
    entry0 = plain[resident[0]]

    def dict_set(i: int) -> None:
        plain[picks_res[i]] = entry0

    def dict_replace(i: int) -> None:
        e = plain[picks_res[i]]
        plain[e.name] = replace(e, last_used=float(i), hits=e.hits + 1, priority=e.priority + 1e-12)

    def dict_copy(i: int) -> None:
        MappingProxyType({**plain, picks_res[i]: entry0})

    rows["baseline: d[name] = entry"] = stats(timed(dict_set, args.calls, args.warmup))
    rows["baseline: d[name] = replace(entry, …)"] = stats(timed(dict_replace, args.calls, args.warmup))
    proxy = MappingProxyType(plain)

    def proxy_copy(i: int) -> None:
        MappingProxyType({**proxy, picks_res[i]: entry0})

    rows["reference: {**d, name: entry}, d a dict"] = stats(timed(dict_copy, args.calls, args.warmup))
    rows["reference: the same, d a MappingProxyType"] = stats(timed(proxy_copy, args.calls, args.warmup))

    # ---- the policy functions ----
    box = {"state": base}

    def hit(i: int) -> None:
        box["state"] = cache.touch(box["state"], picks_res[i], 1e6 + i)

    rows["hit: cache.touch (every policy alike)"] = stats(timed(hit, args.calls, args.warmup))
    victims: dict[str, list[int]] = {}
    for policy in cache.POLICIES:
        def decide(i: int, policy: str = policy) -> None:
            name = picks_other[i]
            cache.plan_room(base, name, base.entries[name].size, budget, policy)

        def miss_path(i: int, policy: str = policy) -> None:
            name = picks_other[i]
            need = base.entries[name].size
            s = cache.touch(base, name, 2e6 + i)
            s = cache.set_resident(s, name, False, need)
            room = cache.plan_room(s, name, need, budget, policy)
            for v in room.victims:
                s = cache.evicted(s, v, policy)
            s = cache.set_resident(s, name, True)
            victims.setdefault(policy, []).append(len(room.victims))

        rows[f"miss decision: cache.plan_room, {policy}"] = stats(timed(decide, args.calls, args.warmup))
        rows[f"miss, state work of ensure(), {policy}"] = stats(timed(miss_path, args.calls, args.warmup))

    # ---- the arbiter ----
    workdir = Path(tempfile.mkdtemp(prefix="mwbench-decide", dir="/tmp"))
    db = None
    per_pass: dict[str, dict[str, Any]] = {}
    load_ms: dict[str, float] = {}
    try:
        config = parse_config({"daemon": {"state_dir": str(workdir)}, "gpu": {"backend": "none"},
                               "ollama": {"url": ""}})
        db = open_state(workdir)
        db["models"].insert_all(
            ({"name": e.name, "pinned": 0, "size": e.size, "size_measured": 1, "last_used": e.last_used,
              "hits": e.hits, "keep_alive": None} for e in base.entries.values()), pk="name", replace=True)
        arbiter = GpuArbiter(config, db, None, None)  # type: ignore[arg-type]
        loaded = [LoadedModel(n, base.entries[n].size, base.entries[n].size) for n in resident]

        def note(i: int) -> None:
            name = picks_res[i]
            if arbiter.resident(name):
                arbiter.note_use(name, None)

        def observe(i: int) -> None:
            arbiter.observe(loaded, None)

        arbiter.cache = base
        rows["arbiter hit path: resident + note_use"] = stats(timed(note, args.calls, args.warmup))
        arbiter.cache = base
        per_pass["as is"] = stats(timed(observe, max(50, args.calls // 20), 10))
        t0 = time.perf_counter()
        assert len(arbiter.scheduler.table.load()[0]) == args.entries
        load_ms["as is"] = round((time.perf_counter() - t0) * 1000, 1)
        t0 = time.perf_counter()
        MappingProxyType({e.name: e for e in base.entries.values()})
        load_ms["one go"] = round((time.perf_counter() - t0) * 1000, 2)
    finally:
        if db is not None:
            db.conn.close()
        shutil.rmtree(workdir, ignore_errors=True)

    base_p50 = rows["baseline: d[name] = entry"]["p50_us"]
    base2_p50 = rows["baseline: d[name] = replace(entry, …)"]["p50_us"]
    table_rows = [[label, fmt(s["p50_us"], 2), fmt(s["p99_us"], 2), fmt_ratio(s["p50_us"] / base_p50),
                   fmt_ratio(s["p50_us"] / base2_p50)] for label, s in rows.items()]
    text = table(["per request (µs)", "p50", "p99", "p50 ÷ d[name] = entry", "p50 ÷ d[name] = replace(…)"],
                 table_rows)
    asis = per_pass["as is"]
    text += "\n\n" + table(["per sample pass / per start", "time"], [
        [f"GpuArbiter.observe, {len(resident)} models in /api/ps: p50 (µs)", fmt(asis["p50_us"], 1)],
        [f"GpuArbiter.observe: p99 (µs, n={asis['n']})", fmt(asis["p99_us"], 1)],
        [f"GpuArbiter._load_cache, {args.entries} rows (ms, once)", fmt(load_ms["as is"])],
        [f"reference: the same {args.entries} entries into one mapping in one go (ms)", fmt(load_ms["one go"], 2)],
    ])
    mean_victims = {k: round(sum(v) / len(v), 2) for k, v in victims.items()}
    text += (f"\n\n{args.entries} entries, {len(resident)} resident "
             f"({sum(base.entries[n].size for n in resident) / GiB:.1f} of {args.budget_gib:g} GiB); "
             f"{args.calls} timed calls per row after {args.warmup} warm-up calls; victims per miss on average: "
             f"{', '.join(f'{k} {v}' for k, v in mean_victims.items())}. Python "
             f"{sys.version.split()[0]}, one thread, time.perf_counter_ns around each call.")
    results = {"entries": args.entries, "resident": len(resident), "calls": args.calls, "per_request": rows,
               "observe": per_pass, "load_cache_ms": load_ms,
               "victims_per_miss": mean_victims}
    emit("decision time", text, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
