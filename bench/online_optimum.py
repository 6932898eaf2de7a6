"""The best hit rate and load-stall any online policy can reach on bench/scheduler_hitrate.py's traces.

Belady knows the future; a policy knows only the past. Where a family's requests are drawn independently from a
law known at each step, the best a policy can do *even knowing that law* is an exact Markov decision problem:
the state is the set of resident models (every subset of the 20 that fits the budget: 600–12,000 of them), a
request either hits or loads its model after evicting a minimal set of residents (evicting more never helps: an
eviction costs nothing and can wait until room is needed), and the reward is a hit (hit rate) or minus the
load's seconds (stall). Solved by backward induction over the trace's length from an empty VRAM for laws that
change (drift, reshuffle, tenants), and by relative value iteration for stationary ones (Zipf, mixed sizes: the
long-run rate). No policy that does not see the future can beat these figures in expectation; learning the law
from requests, as memwarden's `demand` does, can only fall short of them.

Sessions' requests are not independent, but its runs' first requests are: each run's model is drawn from one
law, and every later request of a run is for the model just asked for, a hit for every policy (none evicts the
model it has just loaded). So a sessions trace of R runs is R independent draws from that law, solved by
backward induction over R draws from an empty VRAM, plus its length − R hits. R is random (the runs' lengths
are): its law is exact (the run lengths' law convolved until the trace is full), and the optimum is the
expectation over it of the R-draw optimum. That optimum is told R, which no policy is, so it is a bound no
online policy can pass; the long-run optimal policy, which is not told R, is evaluated exactly over the same R
(`stationary`) and played on the drawn traces (`played`): the best online policy lies between the two.

Ratios are to Belady's mean over --draws traces drawn from the same law (sessions: from the same generator, its
ranking kept), for the same models and budget as bench/scheduler_hitrate.py. Needs numpy (brought by the train
extra). Pure and deterministic.
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
from scheduler_hitrate import (
    FAMILIES,
    GB,
    MEAN_RUN,
    Result,
    Runner,
    Trace,
    add_trace_options,
    load_seconds,
    make_models,
    run_belady,
    run_memwarden,
    sessions_of,
)

SESSIONS = "sessions"
RUN_TAIL = 1e-15  # the probability mass of run counts or lengths left out


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


def bellman(d: Decisions, value: np.ndarray, law: np.ndarray, hit: float, miss: np.ndarray,
            choice: np.ndarray | None = None) -> np.ndarray:
    """One step: the expected reward of a request drawn from `law` plus the best value it can lead to (or, given a
    `choice` of successor for every miss, the value that choice leads to)."""
    best = np.maximum.reduceat(value[d.successors], d.offsets) if choice is None else value[choice]
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


def stationary_choice(d: Decisions, relative: np.ndarray) -> np.ndarray:
    """For every miss, the successor of highest relative value (the first of ties): the long-run optimal policy."""
    scores = relative[d.successors]
    row = np.repeat(np.arange(len(d.offsets)), np.diff(np.append(d.offsets, len(d.successors))))
    best = np.flatnonzero(scores == np.maximum.reduceat(scores, d.offsets)[row])
    _, first = np.unique(row[best], return_index=True)
    return d.successors[best[first]]


def run_length_law(mean_run: float) -> np.ndarray:
    """P(a run has k requests) for k = 0, 1, …, as scheduler_hitrate.run_length draws it: k − ½ ≤ an exponential
    of mean `mean_run` < k + ½, and every draw below 1.5 is 1."""
    longest = int(mean_run * -np.log(RUN_TAIL)) + 2
    at_least = np.exp(-(np.arange(longest + 1) + 0.5) / mean_run)  # P(the exponential ≥ k + ½)
    law = np.zeros(longest + 1)
    law[1] = 1 - at_least[1]
    law[2:] = at_least[1:-1] - at_least[2:]
    return law


def run_count_law(lengths: np.ndarray, length: int) -> np.ndarray:
    """P(a trace of `length` requests starts R runs) for R = 0, 1, …, run lengths drawn from `lengths`: R exceeds r
    while the first r runs' lengths add up to less than `length` (their law is `lengths` convolved r times)."""
    size = 1 << (length + len(lengths)).bit_length()
    step = np.fft.rfft(lengths, size)
    short = np.zeros(length)
    short[0] = 1.0  # the law of the first r runs' total, below `length`; r = 0
    more = [1.0]  # P(R > r)
    while more[-1] > RUN_TAIL:
        short = np.fft.irfft(np.fft.rfft(short, size) * step, size)[:length].clip(0)
        more.append(float(short.sum()))
    return np.concatenate([[0.0], -np.diff(more)])


def over_runs(d: Decisions, law: np.ndarray, hit: float, miss: np.ndarray, runs: np.ndarray,
              choice: np.ndarray | None = None) -> float:
    """The best expected reward of R draws from `law` from an empty VRAM, R drawn from `runs` and told to the
    policy (or, given a `choice`, that policy's expected reward)."""
    value, expected = np.zeros(len(d.member)), 0.0
    for r in range(1, len(runs)):
        value = bellman(d, value, law, hit, miss, choice)
        expected += runs[r] * float(value[d.empty])
    return expected


def play(d: Decisions, choice: np.ndarray) -> Runner:
    """A runner that follows a policy of the decision problem: at a miss, to the resident set `choice` says."""
    row_of = {(int(k), int(m)): row for row, (k, m) in enumerate(zip(d.miss_state, d.miss_model, strict=True))}

    def run(trace: Trace, sizes: Sequence[int], names: list[str], budget: int, popularity: Any) -> Result:
        state, hits, stall = d.empty, 0, 0.0
        for m in trace:
            if d.member[state, m]:
                hits += 1
                continue
            state = int(choice[row_of[state, m]])
            stall += load_seconds(sizes[m])
        return hits, stall
    return run


def draw(laws: Sequence[np.ndarray], rng: random.Random) -> list[int]:
    """A trace drawn afresh from the laws a family's trace was drawn from."""
    models = range(len(laws[0]))
    return [rng.choices(models, weights=law)[0] for law in laws]


def family_figures(family: str, seed: int, n: int, length: int, budget: int, draws: int) -> dict[str, float]:
    make, low, high = FAMILIES[family]
    names, sizes = make_models(n, low, high, random.Random(f"models-{seed}-{low}-{high}"))
    _, popularity = make(n, length, random.Random(f"{family}-{seed}-{length}"))
    if family == SESSIONS:
        return sessions_figures(seed, names, sizes, popularity, length, budget, draws)
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
    traces = [draw(laws, random.Random(f"draw-{family}-{seed}-{k}")) for k in range(draws)]
    return out | drawn_figures(traces, {}, names, sizes, popularity, budget)


def drawn_figures(traces: Sequence[Trace], extra: dict[str, Runner], names: list[str], sizes: Sequence[int],
                  popularity: Any, budget: int) -> dict[str, float]:
    """Each runner's mean hit rate and stall per 1,000 requests over the drawn traces, and the variance of
    Belady's mean stall (the noise in every ratio's denominator)."""
    runners: dict[str, Runner] = {"belady": run_belady, "demand": run_memwarden("demand"), **extra,
                                  "known": lambda trace, sizes, names, budget, popularity: run_known_popularity(
                                      trace, popularity, sizes, load_seconds, budget)}
    out: dict[str, float] = {}
    for label, run in runners.items():
        results = [run(trace, list(sizes), names, budget, popularity) for trace in traces]
        hit_rates = [hits / len(t) for (hits, _), t in zip(results, traces, strict=True)]
        stalls = [s / len(t) * 1000 for (_, s), t in zip(results, traces, strict=True)]
        out[f"{label}_hit_rate"] = float(np.mean(hit_rates))
        out[f"{label}_stall_per_1k"] = float(np.mean(stalls))
        if label == "belady" and len(traces) > 1:
            out["belady_stall_mean_variance"] = float(np.var(stalls, ddof=1)) / len(traces)
    return out


def sessions_figures(seed: int, names: list[str], sizes: Sequence[int], popularity: Any, length: int,
                     budget: int, draws: int) -> dict[str, float]:
    """The optimum over sessions' run starts (module docstring), and the runners on traces drawn afresh."""
    law = np.array([popularity(0, m) for m in range(len(sizes))])
    runs = run_count_law(run_length_law(MEAN_RUN), length)
    mean_runs = float(runs @ np.arange(len(runs)))
    d = decisions(sizes, budget)
    out = {"states": float(len(d.member)), "mean_runs": mean_runs}
    choices = {}
    for key, hit, miss in (("hit", 1.0, np.zeros(len(sizes))), ("stall", 0.0, -np.array(
            [load_seconds(s) for s in sizes]))):
        choices[key] = stationary_choice(d, long_run(d, law, hit, miss)[1])
        for label, choice in (("optimum", None), ("stationary", choices[key])):
            expected = over_runs(d, law, hit, miss, runs, choice)
            if key == "hit":
                out[f"{label}_hit_rate"] = (length - mean_runs + expected) / length
            else:
                out[f"{label}_stall_per_1k"] = -expected / length * 1000
    ranking = sorted(range(len(sizes)), key=lambda m: -law[m])  # Zipf's probabilities fall with the rank
    traces = [sessions_of(ranking, length, random.Random(f"draw-{SESSIONS}-{seed}-{k}"))[0] for k in range(draws)]
    return out | drawn_figures(traces, {f"played_for_{key}": play(d, choice) for key, choice in choices.items()},
                               names, sizes, popularity, budget)


def paired(r: dict[str, float], objective: str, figure: str) -> float:
    """optimum ÷ Belady, estimated as optimum ÷ the long-run policy (both exact) × that policy ÷ Belady as played on
    the same traces: Belady's noise from trace to trace is mostly the policy's too, and cancels."""
    return (r[f"optimum_{figure}"] / r[f"stationary_{figure}"]
            * r[f"played_for_{objective}_{figure}"] / r[f"belady_{figure}"])


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    add_trace_options(p)
    p.add_argument("--draws", type=int, default=3, help="traces drawn per law for Belady's mean (default 3)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                   help="families to solve (default: all)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    budget = int(args.budget_gb * GB)
    started = time.monotonic()
    results: dict[str, Any] = {}
    for family in args.families:
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
    if SESSIONS in results:
        r = results[SESSIONS]
        hit, stall = r["belady_hit_rate"], r["belady_stall_per_1k"]
        text += (f"\n\n{SESSIONS}: the online optimum is told its trace's number of runs ({r['mean_runs']:.1f} on "
                 f"average); the long-run optimal policy, not told, reaches {r['stationary_hit_rate'] / hit:.3f}× / "
                 f"{r['stationary_stall_per_1k'] / stall:.3f}× (exact), played on the drawn traces "
                 f"{r['played_for_hit_hit_rate'] / hit:.3f}× / {r['played_for_stall_stall_per_1k'] / stall:.3f}×; "
                 f"the optimum against Belady on the same traces (its ratio to that policy's exact figure × the "
                 f"policy's played ratio, whose noise Belady's shares): "
                 f"{paired(r, 'hit', 'hit_rate'):.3f}× / {paired(r, 'stall', 'stall_per_1k'):.3f}×.")
    if args.draws > 1:
        text += "\n\nBelady's mean stall, relative standard error: " + ", ".join(
            f"{family} {(r['belady_stall_mean_variance'] / len(args.seeds)) ** 0.5 / r['belady_stall_per_1k']:.1%}"
            for family, r in results.items())
    text += (f"\n\n{args.models} models, budget {args.budget_gb:g} GB, seeds {', '.join(map(str, args.seeds))}, "
             f"{args.length:,} requests, {args.draws} drawn traces a law. "
             f"Solved in {time.monotonic() - started:.0f} s.")
    emit("online optimum", text, {"seeds": args.seeds, "length": args.length, "results": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
