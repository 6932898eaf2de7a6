"""The best hit rate and load-stall any online policy can reach on bench/scheduler_hitrate.py's traces.

Belady knows the future; a policy knows only the past. Where a family's requests are drawn independently from a
law known at each step (every family but sessions, whose runs make the next request depend on the last), the
best a policy can do *even knowing that law* is an exact Markov decision problem: the state is the set of
resident models (every subset of the 20 that fits the budget: 600–12,000 of them), a request either hits or
loads its model after evicting a minimal set of residents (evicting more never helps: an eviction costs nothing
and can wait until room is needed), and the reward is a hit (hit rate) or minus the load's seconds (stall).
Solved by backward induction over the trace's length from an empty VRAM for laws that change (drift,
reshuffle, tenants), and by relative value iteration for stationary ones (Zipf, mixed sizes: the long-run
rate). No policy that does not see the future can beat these figures in expectation; learning the law from
requests, as memwarden's `demand` does, can only fall short of them.

Ratios are to Belady's mean over --draws traces drawn from the same law (the figure the expectation is
comparable with), for the same models and budget as bench/scheduler_hitrate.py. Needs numpy (brought by the
train extra). Pure and deterministic.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from _common import emit, exit_cleanly_on_sigterm, parser, table
from _yardsticks import run_known_popularity
from scheduler_hitrate import FAMILIES, GB, add_trace_options, load_seconds, make_models, run_belady, run_memwarden

SKIPPED = {"sessions": "requests are not drawn independently (runs of one model)"}


@dataclass(frozen=True)
class Decisions:
    """Every resident set that fits, and for each (set, model not in it) the sets a load can leave."""
    member: np.ndarray  # states × models, 1.0 where resident
    miss_state: np.ndarray  # one row per (state, missing model): the state
    miss_model: np.ndarray  # … and the model
    successors: np.ndarray  # the states each row can lead to, grouped by row
    offsets: np.ndarray  # where each row's group starts in successors
    empty: int


def decisions(sizes: Sequence[int], budget: int) -> Decisions:
    n = len(sizes)
    states: list[int] = []

    def fill(i: int, mask: int, used: int) -> None:
        if i == n:
            states.append(mask)
            return
        fill(i + 1, mask, used)
        if used + sizes[i] <= budget:
            fill(i + 1, mask | 1 << i, used + sizes[i])

    fill(0, 0, 0)
    index = {s: k for k, s in enumerate(states)}
    rows_s, rows_m, succ, offsets = [], [], [], []
    for k, s in enumerate(states):
        resident = [i for i in range(n) if s >> i & 1]
        used = sum(sizes[i] for i in resident)
        for m in range(n):
            if s >> m & 1:
                continue
            rows_s.append(k)
            rows_m.append(m)
            offsets.append(len(succ))
            need = used + sizes[m] - budget
            for r in range(len(resident) + 1):
                for gone in itertools.combinations(resident, r):
                    freed = sum(sizes[i] for i in gone)
                    if freed >= need and not any(freed - sizes[i] >= need for i in gone):
                        succ.append(index[(s & ~sum(1 << i for i in gone)) | 1 << m])
                if need <= 0:
                    break
    member = np.array([[s >> i & 1 for i in range(n)] for s in states], dtype=float)
    return Decisions(member, np.array(rows_s), np.array(rows_m), np.array(succ), np.array(offsets), index[0])


def bellman(d: Decisions, value: np.ndarray, law: np.ndarray, hit: float, miss: np.ndarray) -> np.ndarray:
    """One step: the expected reward of a request drawn from `law` plus the best value it can lead to."""
    best = np.maximum.reduceat(value[d.successors], d.offsets)
    missed = np.bincount(d.miss_state, weights=law[d.miss_model] * (best + miss[d.miss_model]),
                         minlength=len(value))
    return missed + (d.member @ law) * (value + hit)


def over_horizon(d: Decisions, laws: Sequence[np.ndarray], hit: float, miss: np.ndarray) -> float:
    """The best expected reward per request over the whole sequence of laws, from an empty VRAM."""
    value = np.zeros(len(d.member))
    for law in reversed(laws):
        value = bellman(d, value, law, hit, miss)
    return float(value[d.empty]) / len(laws)


def long_run(d: Decisions, law: np.ndarray, hit: float, miss: np.ndarray,
             tol: float = 1e-9) -> tuple[float, np.ndarray]:
    """The best long-run reward per request under one law, and each resident set's value relative to an empty
    VRAM's (relative value iteration, averaged with the last value so that the iteration converges whatever the
    chain's period)."""
    value = np.zeros(len(d.member))
    for _ in range(100_000):
        step = bellman(d, value, law, hit, miss) - value
        lo, hi = float(step.min()), float(step.max())
        value = value + step / 2
        value -= value[d.empty]
        if hi - lo < tol:
            return (lo + hi) / 2, value
    raise RuntimeError("relative value iteration did not converge")


def draw(laws: Sequence[np.ndarray], rng: random.Random) -> list[int]:
    """A trace drawn afresh from the laws a family's trace was drawn from."""
    models = range(len(laws[0]))
    return [rng.choices(models, weights=law)[0] for law in laws]


def family_figures(family: str, seed: int, n: int, length: int, budget: int, draws: int) -> dict[str, float]:
    make, low, high = FAMILIES[family]
    names, sizes = make_models(n, low, high, random.Random(f"models-{seed}-{low}-{high}"))
    _, popularity = make(n, length, random.Random(f"{family}-{seed}-{length}"))
    laws = [np.array([popularity(t, m) for m in range(n)]) for t in range(length)]
    stationary = all(np.array_equal(laws[0], law) for law in laws)
    d = decisions(sizes, budget)
    cost = np.array([load_seconds(s) for s in sizes])
    if stationary:
        hit_rate = long_run(d, laws[0], 1.0, np.zeros(n))[0]
        stall = -long_run(d, laws[0], 0.0, -cost)[0]
    else:
        hit_rate = over_horizon(d, laws, 1.0, np.zeros(n))
        stall = -over_horizon(d, laws, 0.0, -cost)
    out = {"states": float(len(d.member)), "optimum_hit_rate": hit_rate, "optimum_stall_per_1k": stall * 1000}
    runners = {"belady": run_belady, "demand": run_memwarden("demand")}
    sums = {k: [0.0, 0.0] for k in [*runners, "known"]}
    for k in range(draws):
        trace = draw(laws, random.Random(f"draw-{family}-{seed}-{k}"))
        for label, run in runners.items():
            hits, s = run(trace, sizes, names, budget, popularity)
            sums[label][0] += hits / length / draws
            sums[label][1] += s / length * 1000 / draws
        hits, s = run_known_popularity(trace, popularity, sizes, load_seconds, budget)
        sums["known"][0] += hits / length / draws
        sums["known"][1] += s / length * 1000 / draws
    for label, (h, s) in sums.items():
        out[f"{label}_hit_rate"], out[f"{label}_stall_per_1k"] = h, s
    return out


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    add_trace_options(p)
    p.add_argument("--draws", type=int, default=3, help="traces drawn per law for Belady's mean (default 3)")
    p.add_argument("--families", nargs="+", default=[f for f in FAMILIES if f not in SKIPPED],
                   help="families to solve (default: every one whose requests are independent)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    budget = int(args.budget_gb * GB)
    started = time.monotonic()
    results: dict[str, Any] = {}
    for family in args.families:
        if family in SKIPPED:
            raise SystemExit(f"online_optimum: {family}: {SKIPPED[family]}")
        per = [family_figures(family, s, args.models, args.length, budget, args.draws) for s in args.seeds]
        results[family] = {k: sum(r[k] for r in per) / len(per) for k in per[0]}
    rows = []
    for family, r in results.items():
        hit, stall = r["belady_hit_rate"], r["belady_stall_per_1k"]
        rows.append([family] + [f"{r[f'{k}_hit_rate'] / hit:.3f}× / {r[f'{k}_stall_per_1k'] / stall:.3f}×"
                                for k in ("optimum", "known", "demand")]
                    + ["yes" if r["optimum_hit_rate"] / hit >= 0.9 else "no",
                       "yes" if r["optimum_stall_per_1k"] / stall <= 1.15 else "no"])
    text = "hit rate ÷ Belady's / load-stall ÷ Belady's (Belady: mean of the drawn traces)\n\n" + table(
        ["family", "online optimum", "known popularity (A0)", "memwarden demand",
         "hit goal 0.9 reachable", "stall goal 1.15 reachable"], rows)
    text += (f"\n\n{args.models} models, budget {args.budget_gb:g} GB, seeds {', '.join(map(str, args.seeds))}, "
             f"{args.length:,} requests, {args.draws} drawn traces a law; not solved: "
             + "; ".join(f"{f} ({why})" for f, why in SKIPPED.items())
             + f". Solved in {time.monotonic() - started:.0f} s.")
    emit("online optimum", text, {"seeds": args.seeds, "length": args.length, "results": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
