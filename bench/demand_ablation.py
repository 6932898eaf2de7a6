"""What each part of the demand policy is worth: demand against itself with one part changed, on the trace families
of bench/scheduler_hitrate.py, as ratios to Belady's hit rate and load-stall seconds (the same traces, seeds and
budget, so the "demand" rows equal that benchmark's).

Variants (memwarden.policies.cache driven as scheduler_hitrate drives it; constants set for the variant's run):
  demand                     as shipped: switches counted, half-life DEMAND_HALF_LIFE switches, staleness
                             bound DEMAND_STALE / age, cost = load seconds, the count restarted at a change of
                             law while a duel says it ranks better, from a kept law when one is back
                             (policies/demand.py)
  no change detection        CHANGE_NATS = ∞: one half-life, as demand was before the restarted count
  duel half-life D           DUEL_HALF_LIFE = D switches
  no kept laws               KEPT_LAWS = 0: a change always restarts the count from the short memory
  law back at N nats         LAW_BACK_NATS = N
  law back worth M switches  LAW_BACK_MASS = M
  every request counts       a phantom request between any two, so each request is a switch (half-life doubled:
                             the same number of requests)
  no staleness bound         DEMAND_STALE = ∞: decayed counts alone
  cost = 1                   load seconds taken as 1 for every model: hits per byte, not seconds
  half-life H                DEMAND_HALF_LIFE = H switches
  staleness bound c          DEMAND_STALE = c
  one half-life (replay)     bench/_demand_memory.py's replay of demand, no second memory: equals "no change
                             detection"
  likelihood, change,        a second, short memory (half-life 50 switches) beside DEMAND_HALF_LIFE, and a rule
  shadow, change by …        choosing online which one ranks, or restarting the long one at a change of law
                             (bench/_demand_memory.py); "duel D": the duel's half-life, D switches (else 1,000)
  known popularity (A0)      the mark (bench/_yardsticks.py)
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import scheduler_hitrate as sh
from _common import emit, exit_cleanly_on_sigterm, fmt_ratio, parser, table
from _demand_memory import MemoryRule, runner

from memwarden.policies import cache, demand

PHANTOM = "\0phantom"  # never requested for real, never resident: its requests only make the next one a switch


def run_demand(every_request: bool = False) -> sh.Runner:
    def run(trace: sh.Trace, sizes: sh.Sizes, names: list[str], budget: int, popularity: sh.Popularity
            ) -> sh.Result:
        state = cache.CacheState()
        hits, stall = 0, 0.0
        for t, m in enumerate(trace):
            if every_request:
                state = cache.touch(state, PHANTOM, float(t), 0)
            state, hit = sh.memwarden_step(state, "demand", names[m], sizes[m], float(t), budget)
            hits += hit
            stall += 0.0 if hit else sh.load_seconds(sizes[m])
        return hits, stall
    return run


@contextmanager
def patched(**values: Any) -> Iterator[None]:
    """The module-level `values` set for a run: demand's constants in policies/demand.py, the rest in cache.py."""
    saved = {k: getattr(_home(k), k) for k in values}
    for k, v in values.items():
        setattr(_home(k), k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(_home(k), k, v)


def _home(name: str) -> Any:
    return demand if hasattr(demand, name) else cache


Variant = tuple[sh.Runner, dict[str, Any]]


def variants() -> dict[str, Variant]:
    half_life = demand.DEMAND_HALF_LIFE
    out: dict[str, Variant] = {
        "demand": (run_demand(), {}),
        "every request counts": (run_demand(every_request=True), {"DEMAND_HALF_LIFE": 2 * half_life}),
        "no staleness bound": (run_demand(), {"DEMAND_STALE": float("inf")}),
        "cost = 1": (run_demand(), {"load_time": lambda entry: 1.0}),
        "no change detection": (run_demand(), {"CHANGE_NATS": float("inf")}),
        "duel half-life 1000": (run_demand(), {"DUEL_HALF_LIFE": 1000.0}),
        "no kept laws": (run_demand(), {"KEPT_LAWS": 0}),
        "law back at 6 nats": (run_demand(), {"LAW_BACK_NATS": 6.0}),
        "law back at 10 nats": (run_demand(), {"LAW_BACK_NATS": 10.0}),
        "law back worth 150 switches": (run_demand(), {"LAW_BACK_MASS": 150.0}),
    }
    for h in (150.0, 250.0, 500.0, 600.0):
        out[f"half-life {h:g}"] = (run_demand(), {"DEMAND_HALF_LIFE": h})
    for c in (1.0, 3.0, 4.0):
        out[f"staleness bound {c:g}"] = (run_demand(), {"DEMAND_STALE": c})
    out["one half-life (replay)"] = (runner(MemoryRule("one")), {})
    for kind in ("likelihood", "change", "shadow", "change by shadows", "change by disputes",
                 "change by disputes, room as made"):
        out[f"{kind}, short 50"] = (runner(MemoryRule(kind)), {})
    for kind in ("change by shadows", "change by disputes", "change by disputes, room as made"):
        out[f"{kind}, short 50, duel 3000"] = (runner(MemoryRule(kind, duel_half_life=3000.0)), {})
    out[sh.KNOWN] = (sh.POLICIES[sh.KNOWN], {})
    return out


def simulate(seeds: list[int], length: int, n_models: int, budget: int, only: list[str] | None = None
             ) -> dict[str, dict[str, Any]]:
    runs = {label: v for label, v in variants().items() if not only or label in only}
    out: dict[str, dict[str, Any]] = {}
    for family, (make, low, high) in sh.FAMILIES.items():
        sums: dict[str, list[float]] = {label: [0.0, 0.0] for label in [sh.BELADY, *runs]}
        for seed in seeds:
            names, sizes = sh.make_models(n_models, low, high, random.Random(f"models-{seed}-{low}-{high}"))
            trace, popularity = make(n_models, length, random.Random(f"{family}-{seed}-{length}"))
            todo: dict[str, Variant] = {sh.BELADY: (sh.run_belady, {}), **runs}
            for label, (run, constants) in todo.items():
                with patched(**constants):
                    hits, stall = run(trace, sizes, names, budget, popularity)
                sums[label][0] += hits
                sums[label][1] += stall
        belady = sums[sh.BELADY]
        out[family] = {label: {"hit_ratio": s[0] / belady[0], "stall_ratio": s[1] / belady[1]}
                       for label, s in sums.items() if label != sh.BELADY}
    return out


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    sh.add_trace_options(p)
    p.add_argument("--only", nargs="+", metavar="VARIANT", choices=list(variants()),
                   help="these variants alone (default: all)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    started = time.monotonic()
    results = simulate(args.seeds, args.length, args.models, int(args.budget_gb * sh.GB), args.only)
    labels = list(next(iter(results.values())))

    def cell(r: dict[str, float]) -> str:
        return f"{fmt_ratio(r['hit_ratio'])} / {fmt_ratio(r['stall_ratio'])}"

    text = "hit rate ÷ Belady's / load-stall seconds ÷ Belady's\n\n" + table(
        ["variant", *results], [[label] + [cell(results[f][label]) for f in results] for label in labels])
    text += (f"\n\n{args.models} models, budget {args.budget_gb:g} GB; sums over seeds "
             f"{', '.join(map(str, args.seeds))} of {args.length:,}-request traces. "
             f"Simulated in {time.monotonic() - started:.1f} s.")
    emit("demand ablation", text, {"seeds": args.seeds, "length": args.length, "results": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
