"""bench/online_optimum.py's sessions optimum checked against brute force, where brute force is cheap.

1. The run length's law (`run_length_law`) against 1,000,000 lengths drawn by scheduler_hitrate.run_length,
   where each length is expected at least 5 times (a rarer one drawn once is many standard errors off by chance).
2. The run count's law (`run_count_law`) against the run counts of --traces traces drawn the same way, at the
   bench's trace length and mean run.
3. A tiny instance: 4 models of which at most 2 fit, short runs, a few requests, each objective (hits, and minus
   the load-stall seconds) solved three ways:
   - told the runs: every way to cut the trace into runs, weighed by its probability, and every request of it
     played (a run's later requests included) by expectimax over every eviction set, minimal or not. The
     sessions optimum (`over_runs` over `run_count_law`, plus the later requests' hits) must equal it.
   - not told: expectimax over what a policy sees, the requests so far, the next request's law from the
     posterior over the current run's remaining length: the best online policy, exactly. It must lie between
     the long-run optimal policy's exact figure (`stationary_choice`, evaluated by `over_runs`) and the optimum
     told the runs.
Needs numpy (brought by the train extra). Pure and deterministic.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import sys
from collections.abc import Callable, Sequence

import numpy as np
from _common import emit, exit_cleanly_on_sigterm, parser, table
from online_optimum import decisions, long_run, over_runs, run_count_law, run_length_law, stationary_choice
from scheduler_hitrate import GB, MEAN_RUN, load_seconds, run_length

# An instance where the horizon matters (the long-run policy is not the optimum near a trace's end), so that the
# optimum told the runs, the best online policy and the long-run policy differ.
TINY_SIZES = [int(gb * GB) for gb in (2.0, 1.0, 2.0, 4.0)]
TINY_BUDGET = 4 * GB  # the largest alone, or two of the others
TINY_LAW = np.array([0.005, 0.546, 0.318, 0.131])


def kept_sets(resident: frozenset[int], m: int, sizes: Sequence[int], budget: int) -> list[frozenset[int]]:
    """Every resident set a load of m can leave: m with any part of `resident` that fits beside it."""
    out = []
    for r in range(len(resident) + 1):
        for kept in itertools.combinations(sorted(resident), r):
            if sum(sizes[i] for i in kept) + sizes[m] <= budget:
                out.append(frozenset(kept) | {m})
    return out


def brute_force(law: np.ndarray, sizes: Sequence[int], budget: int, hit: float, miss: np.ndarray,
                lengths: np.ndarray, length: int) -> tuple[float, float]:
    """The best expected reward of a trace of `length` requests (a hit earns `hit`, a load of m `miss[m]`), for a
    policy told where the runs start, and for one that sees only the requests so far."""
    lengths = np.append(lengths[:length + 1], lengths[length + 1:].sum())  # a run may outlast the trace

    def step(m: int, resident: frozenset[int], then: Callable[[frozenset[int]], float]) -> float:
        if m in resident:
            return hit + then(resident)
        return miss[m] + max(then(kept) for kept in kept_sets(resident, m, sizes, budget))

    @functools.cache
    def told(starts: frozenset[int], t: int, resident: frozenset[int], last: int) -> float:
        if t == length:
            return 0.0
        if t not in starts:
            return step(last, resident, lambda kept: told(starts, t + 1, kept, last))
        return sum(p * step(m, resident, lambda kept, m=m: told(starts, t + 1, kept, m)) for m, p in enumerate(law))

    @functools.cache
    def untold(t: int, resident: frozenset[int], last: int, left: tuple[float, ...]) -> float:
        """`left`: the posterior law of the current run's requests still to come (the last `length` or more)."""
        if t == length:
            return 0.0
        total = 0.0
        for m, p in enumerate(law):
            after = np.zeros(length + 1)
            if m == last:
                after[:-1] += left[1:]
            after += left[0] * p * lengths[1:]
            chance = after.sum()
            if chance > 0:
                known = tuple(np.round(after / chance, 14))
                total += chance * step(m, resident, lambda kept, m=m, known=known: untold(t + 1, kept, m, known))
        return total

    told_total = 0.0
    for cuts in itertools.product((False, True), repeat=length - 1):
        starts = [0] + [t + 1 for t, cut in enumerate(cuts) if cut]
        weight = math.prod(lengths[b - a] for a, b in itertools.pairwise(starts)) * lengths[length - starts[-1]:].sum()
        told_total += weight * told(frozenset(starts), 0, frozenset(), -1)
    return told_total, untold(0, frozenset(), -1, (1.0,) + (0.0,) * length)


def tiny_checks(mean_run: float, length: int) -> list[dict[str, float]]:
    law = TINY_LAW
    lengths = run_length_law(mean_run)
    runs = run_count_law(lengths, length)
    d = decisions(TINY_SIZES, TINY_BUDGET)
    out = []
    for objective, hit, miss in (("hits", 1.0, np.zeros(len(law))),
                                 ("−stall s", 0.0, -np.array([load_seconds(s) for s in TINY_SIZES]))):
        later = hit * (length - float(runs @ np.arange(len(runs))))
        choice = stationary_choice(d, long_run(d, law, hit, miss)[1])
        told, untold = brute_force(law, TINY_SIZES, TINY_BUDGET, hit, miss, lengths, length)
        out.append({"objective": objective, "told_brute_force": told,
                    "told_optimum": later + over_runs(d, law, hit, miss, runs), "untold_brute_force": untold,
                    "stationary": later + over_runs(d, law, hit, miss, runs, choice)})
    return out


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=20000, help="requests per trace for the run count (20000)")
    p.add_argument("--traces", type=int, default=4000, help="traces drawn for the run count (default 4000)")
    p.add_argument("--tiny-length", type=int, default=8, help="requests in the tiny instance (default 8)")
    p.add_argument("--tiny-mean-run", type=float, default=2.0, help="the tiny instance's mean run (default 2)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    rng, draws = random.Random("check-run-length"), 1_000_000
    law = run_length_law(MEAN_RUN)
    counts = np.bincount([run_length(rng) for _ in range(draws)], minlength=len(law))[:len(law)]
    common = law * draws >= 5
    z_lengths = np.abs(counts - law * draws)[common] / np.sqrt(law * (1 - law) * draws)[common]
    rng, counted = random.Random("check-run-count"), []
    for _ in range(args.traces):
        total, r = 0, 0
        while total < args.length:
            total, r = total + run_length(rng), r + 1
        counted.append(r)
    runs = run_count_law(law, args.length)
    mean = float(runs @ np.arange(len(runs)))
    sd = float(runs @ (np.arange(len(runs)) - mean) ** 2) ** 0.5
    z_runs = (np.mean(counted) - mean) / (sd / len(counted) ** 0.5)
    tiny = tiny_checks(args.tiny_mean_run, args.tiny_length)

    text = (f"run length, mean {MEAN_RUN}: the law's mean {law @ np.arange(len(law)):.4f}, {draws:,} drawn "
            f"{counts @ np.arange(len(law)) / draws:.4f}; the largest gap of a length's frequency (the "
            f"{common.sum()} lengths expected 5 times or more) {z_lengths.max():.2f} standard errors\n"
            f"run count, {args.length:,} requests: the law's mean {mean:.3f} (sd {sd:.3f}), {args.traces:,} drawn "
            f"{np.mean(counted):.3f} (sd {np.std(counted, ddof=1):.3f}): {z_runs:+.2f} standard errors\n\n")
    text += table(["tiny instance", "told the runs: brute force", "sessions optimum", "difference",
                   "not told: brute force", "long-run policy, exact"],
                  [[c["objective"], f"{c['told_brute_force']:.9f}", f"{c['told_optimum']:.9f}",
                    f"{c['told_optimum'] - c['told_brute_force']:.1e}", f"{c['untold_brute_force']:.9f}",
                    f"{c['stationary']:.9f}"] for c in tiny])
    text += (f"\n\n{len(TINY_SIZES)} models of {', '.join(f'{s / GB:g}' for s in TINY_SIZES)} GB, law "
             f"{', '.join(f'{p:g}' for p in TINY_LAW)}, budget "
             f"{TINY_BUDGET / GB:g} GB, {args.tiny_length} requests, mean run {args.tiny_mean_run:g}: each figure "
             "is a whole trace's expected hits or minus its expected load-stall seconds.")
    emit("sessions optimum check", text, {"run_length_largest_z": float(z_lengths.max()), "run_count_z": z_runs,
                                          "run_count_mean": mean, "tiny": tiny}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
