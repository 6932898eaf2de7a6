"""Where demand loses loads to the known-popularity mark (A0): each one's misses by position in a trace family's
period, per seed. For the tenants family (a burst of 300 requests every 1,000) this says whether demand's distance
to A0 lies in learning a burst's start and end or in the steady stretches between. Pure and deterministic."""

from __future__ import annotations

import random
import sys
from typing import Any

import scheduler_hitrate as sh
from _common import emit, exit_cleanly_on_sigterm, parser, table
from _yardsticks import run_known_popularity

from memwarden.policies import cache


def misses(trace: sh.Trace, sizes: sh.Sizes, names: list[str], budget: int, popularity: sh.Popularity,
           period: int, bucket: int) -> dict[str, list[int]]:
    out = {"demand": [0] * (period // bucket), "A0": [0] * (period // bucket)}

    def missed(policy: str, t: int) -> None:
        out[policy][(t % period) // bucket] += 1

    state = cache.CacheState()
    for t, m in enumerate(trace):
        state, hit = sh.memwarden_step(state, "demand", names[m], sizes[m], float(t), budget)
        if not hit:
            missed("demand", t)
    run_known_popularity(trace, popularity, sizes, sh.load_seconds, budget, on_miss=lambda t: missed("A0", t))
    return out


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    sh.add_trace_options(p)
    p.add_argument("--family", default="tenants", choices=list(sh.FAMILIES), help="trace family (default tenants)")
    p.add_argument("--period", type=int, default=1000, help="requests per period (default 1000, tenants')")
    p.add_argument("--bucket", type=int, default=100, help="requests per position bucket (default 100)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    make, low, high = sh.FAMILIES[args.family]
    budget = int(args.budget_gb * sh.GB)
    results: dict[str, Any] = {}
    rows = []
    for seed in args.seeds:
        names, sizes = sh.make_models(args.models, low, high, random.Random(f"models-{seed}-{low}-{high}"))
        trace, popularity = make(args.models, args.length, random.Random(f"{args.family}-{seed}-{args.length}"))
        got = misses(trace, sizes, names, budget, popularity, args.period, args.bucket)
        results[str(seed)] = got
        rows.append([seed] + [f"{d:+d}" for d in (a - b for a, b in zip(got["demand"], got["A0"], strict=True))]
                    + [sum(got["demand"]) - sum(got["A0"])])
    headers = ["seed"] + [f"{i * args.bucket}–{(i + 1) * args.bucket - 1}" for i in range(args.period // args.bucket)]
    text = (f"demand's misses less A0's, by position in each {args.period}-request period ({args.family})\n\n"
            + table([*headers, "all"], rows))
    emit("misses by position", text, {"family": args.family, "period": args.period, "bucket": args.bucket,
                                      "seeds": args.seeds, "misses": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
