"""Where demand's evictions part from the exact online optimum's, and what each parting costs.

For each law a family's trace is drawn from (one for Zipf and mixed sizes, one a phase for reshuffle), the
optimum's relative value of every resident set is solved as in bench/online_optimum.py (the long-run problem of
that law). demand is replayed on the family's trace and, at each miss, the set it leaves is compared with the
best the optimum can reach from the same set; a parting costs the difference of their values (load-stall
seconds, or hits), charged to one of:
  learning    the known-popularity rule (A0: the law's popularity × load seconds ÷ size, greedy) would have left
              the optimum's set: what demand lacks is the law, which it learns from requests
  ranking     A0 parts from the optimum too: greedy ranking by value per byte is what differs
Counted beside them: needless evictions, of a model whose room the other victims already made. Costs are per
1,000 requests, the whole trace and its first 1,000 requests after each change of law (learning a new law).
Needs numpy (brought by the train extra). Pure and deterministic.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence

import numpy as np
from _common import emit, exit_cleanly_on_sigterm, parser, table
from online_optimum import decisions, long_run
from scheduler_hitrate import FAMILIES, GB, add_trace_options, load_seconds, make_models, memwarden_step

from memwarden.policies import cache

EARLY = 1000  # requests after a change of law counted as learning it


def known_popularity_set(resident: set[int], m: int, law: np.ndarray, sizes: Sequence[int], budget: int) -> int:
    """The resident set (a bit mask) A0 leaves after loading m."""
    kept, used = set(resident), sum(sizes[i] for i in resident)
    while used + sizes[m] > budget:
        victim = min(kept, key=lambda r: (law[r] * load_seconds(sizes[r]) / sizes[r], r))
        kept.discard(victim)
        used -= sizes[victim]
    return sum(1 << i for i in kept | {m})


def family_partings(family: str, seed: int, n: int, length: int, budget: int, objective: str) -> dict[str, float]:
    make, low, high = FAMILIES[family]
    names, sizes = make_models(n, low, high, random.Random(f"models-{seed}-{low}-{high}"))
    trace, popularity = make(n, length, random.Random(f"{family}-{seed}-{length}"))
    d = decisions(sizes, budget)
    cost = np.array([load_seconds(s) for s in sizes])
    hit, miss = (1.0, np.zeros(n)) if objective == "hit" else (0.0, -cost)
    index = {int(mask): k for k, mask in enumerate(d.member @ (2 ** np.arange(n)))}
    rows = {(int(s), int(m)): r for r, (s, m) in enumerate(zip(d.miss_state, d.miss_model, strict=True))}
    ends = np.append(d.offsets[1:], len(d.successors))
    solved: dict[bytes, np.ndarray] = {}
    out = dict.fromkeys(["misses", "learning", "ranking", "learning_early", "ranking_early", "needless"], 0.0)
    state, resident, changed_at, last_law = cache.CacheState(), set(), 0, b""
    for t, m in enumerate(trace):
        law = np.array([popularity(t, i) for i in range(n)])
        if law.tobytes() != last_law:
            last_law, changed_at = law.tobytes(), t
        value = solved.get(last_law)
        if value is None:
            value = solved[last_law] = long_run(d, law, hit, miss)[1]
        before = set(resident)
        state, was_hit = memwarden_step(state, "demand", names[m], sizes[m], float(t), budget)
        resident = {names.index(e.name) for e in state.resident()}
        if was_hit:
            continue
        out["misses"] += 1
        used = sum(sizes[i] for i in resident)
        out["needless"] += any(used + sizes[v] <= budget for v in before - resident)
        row = rows[(index[sum(1 << i for i in before)], m)]
        reachable = d.successors[d.offsets[row]:ends[row]]
        best = int(reachable[np.argmax(value[reachable])])
        mine = index[sum(1 << i for i in resident)]
        if mine == best:
            continue
        door = "learning" if index[known_popularity_set(before, m, law, sizes, budget)] == best else "ranking"
        out[door] += (value[best] - value[mine]) / length * 1000
        if t - changed_at < EARLY:
            out[f"{door}_early"] += (value[best] - value[mine]) / length * 1000
    return out


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    add_trace_options(p)
    p.add_argument("--families", nargs="+", default=["zipf s=1.0", "reshuffle"], help="families to replay")
    p.add_argument("--objective", choices=["stall", "hit"], default="stall", help="what a parting costs")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    budget = int(args.budget_gb * GB)
    results = {}
    for family in args.families:
        per = [family_partings(family, s, args.models, args.length, budget, args.objective) for s in args.seeds]
        results[family] = {k: sum(r[k] for r in per) / len(per) for k in per[0]}
    unit = "load-stall s" if args.objective == "stall" else "hits"
    rows = [[f, f"{r['misses']:.0f}", f"{r['needless']:.0f}", f"{r['learning']:.2f}", f"{r['learning_early']:.2f}",
             f"{r['ranking']:.2f}", f"{r['ranking_early']:.2f}"] for f, r in results.items()]
    text = table(["family", "misses", "needless evictions", f"learning ({unit} / 1k requests)",
                  f"… in the first {EARLY} after a change", f"ranking ({unit} / 1k)", f"… in the first {EARLY}"], rows)
    text += f"\n\nmeans over seeds {', '.join(map(str, args.seeds))}, {args.length:,} requests, {args.models} models."
    emit("demand against the online optimum", text, {"seeds": args.seeds, "results": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
