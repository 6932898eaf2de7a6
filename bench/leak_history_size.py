"""The leak history's size per container in SQLite after 7 simulated days of 2-s samples, and the cost of a save.

Each series is 2 GiB plus its shape plus Gaussian noise of 2 MiB (seeded), one sample every 2 s, fed into
memwarden.policies.leak_scales with the shipped defaults (containers.leak_window 24h, leak_min_rate 1MiB/h) and
saved through containers/leak_store.py into a real state database every simulated hour, judged first. Size is
measured from the rows (8 bytes a number, the UTF-8 length of each text); the largest over the week is reported.
Baseline, same run: the raw samples kept (16 bytes each: time and working set). A falling series is the worst
case for the retained past (its maxima form a monotonic queue, fullest when each is lower than the last).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import cpu_pressure, emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, parser, ratio, table

from memwarden.containers.leak_store import LeakStore
from memwarden.policies.leak import Sample
from memwarden.policies.leak_scales import LeakHistory, LeakSettings, verdict_of
from memwarden.state.db import open_state

MIB = 1 << 20
GIB = 1 << 30
HOUR = 3600.0
DAY = 24 * HOUR
STEP = 2.0
GOAL = 200_000  # bytes per container for 7 days (issue 16)
SETTINGS = LeakSettings.of(DAY, MIB / HOUR)
CID = "0" * 64

SERIES: list[tuple[str, Callable[[float], float]]] = [
    ("steady", lambda t: 0.0),
    ("leak 10 MB/h", lambda t: 10e6 / HOUR * t),
    ("falling 10 MB/h", lambda t: -10e6 / HOUR * t),
    ("daily cycle ±300 MiB", lambda t: 300 * MIB * math.cos(2 * math.pi * t / DAY)),
    ("sawtooth 5 min, 300 MiB", lambda t: 300 * MIB * (((t + 300 - STEP) % 300) / 300)),
]


def replay(store: LeakStore, name: str, shape: Callable[[float], float], days: float, seed: int) -> dict:
    rnd, history = random.Random(seed), LeakHistory(SETTINGS)
    largest, saves = 0, []
    per_hour = int(HOUR / STEP)
    for i in range(int(days * DAY / STEP)):
        t = i * STEP
        history.add(Sample(t, int(2 * GIB + shape(t) + rnd.gauss(0, 2 * MIB))))
        if (i + 1) % per_hour == 0:
            verdict = verdict_of(history)
            started = time.perf_counter()
            store.save(name, CID, history, verdict, t)
            saves.append(time.perf_counter() - started)
            largest = max(largest, store.size(name))
    return {"samples": history.count, "largest_bytes": largest, "final_bytes": store.size(name),
            "raw_bytes": 16 * history.count, "save_ms_median": 1e3 * statistics.median(saves),
            "save_ms_max": 1e3 * max(saves)}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--days", type=float, default=7.0, help="simulated days per series (default 7)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        db = open_state(Path(tmp))
        store = LeakStore(db)
        for seed, (label, shape) in enumerate(SERIES):
            r = results[label] = replay(store, f"c{seed}", shape, args.days, seed)
            rows.append([label, r["samples"], fmt(r["largest_bytes"] / 1000), fmt(r["final_bytes"] / 1000),
                         fmt(r["raw_bytes"] / 1000), fmt_ratio(ratio(r["largest_bytes"], r["raw_bytes"])),
                         fmt(r["save_ms_median"], 2), fmt(r["save_ms_max"], 2),
                         "yes" if r["largest_bytes"] <= GOAL else "no"])
        db.close()
    text = table(["series", "samples", "largest kB", "final kB", "baseline: raw samples kB", "largest ÷ raw",
                  "save ms (median)", "save ms (max)", "≤ 200 kB"], rows)
    text += f"\n\n{args.days:g} simulated days each; CPU pressure some avg60 {fmt(cpu_pressure())}"
    emit("leak history size per container", text, {"days": args.days, "series": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
