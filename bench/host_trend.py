"""The host RAM trend replayed through the pure policy: how long before RAM's warning level the forecast warns,
how close its forecast is, and how many warnings benign series raise.

A 32 GiB host, used RAM = its shape plus Gaussian noise of 32 MiB (seeded), one sample every 2 s (the daemon's
default sample interval), fed sample by sample into memwarden.policies.host_trend with the shipped default
host.trend_horizon (24 h). Baseline, same run, same samples: a naive forecast, the least-squares slope of the
last hour's used RAM, warning when it would use up the available RAM within the same horizon, judged every 10 s.
A warning is a transition into "warned"; the lead is the time from the first warning to the moment RAM used
crosses host.ram_warn_percent (85 %).

    cd bench && ../.venv/bin/python host_trend.py [--json]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from _common import emit, table

from memwarden.config.schema import HostConfig
from memwarden.policies import host_trend
from memwarden.snapshots import HostSnapshot

MIB, GIB = 1 << 20, 1 << 30
HOUR = 3600.0
STEP = 2.0
TOTAL = 32 * GIB
NOISE = 32 * MIB
CFG = HostConfig()
WARN_AT = CFG.ram_warn_percent / 100 * TOTAL  # bytes used where the RAM level warns

LEAKS = [  # label, used RAM at t, replayed for
    ("256 MiB/h from 16 GiB", lambda t: 16 * GIB + 256 * MIB * t / HOUR, 48 * HOUR),
    ("1 GiB/h from 16 GiB", lambda t: 16 * GIB + GIB * t / HOUR, 14 * HOUR),
    ("4 GiB/h from 16 GiB", lambda t: 16 * GIB + 4 * GIB * t / HOUR, 4 * HOUR),
]
BENIGN = [  # label, used RAM at t, over 24 h
    ("steady 20 GiB", lambda t: 20 * GIB),
    ("daily cycle 20 GiB ±3 GiB", lambda t: 20 * GIB + 3 * GIB * math.cos(2 * math.pi * t / (24 * HOUR))),
    ("a 6 GiB model loaded at 2 h, kept", lambda t: 20 * GIB + (6 * GIB if t >= 2 * HOUR else 0)),
    ("a 4 GiB model loaded for 10 min every 30 min",
     lambda t: 20 * GIB + (4 * GIB if t % 1800 < 600 else 0)),
    ("batch job: +4 GiB over 1 h, freed, hourly", lambda t: 18 * GIB + 4 * GIB * ((t % HOUR) / HOUR)),
]


def naive(window: deque[tuple[float, float]], available: float) -> bool:
    n = len(window)
    if n < 2 or window[-1][0] - window[0][0] < 0.8 * HOUR:
        return False
    mt = sum(t for t, _ in window) / n
    mv = sum(v for _, v in window) / n
    den = sum((t - mt) ** 2 for t, _ in window)
    slope = sum((t - mt) * (v - mv) for t, v in window) / den if den else 0.0
    return slope > 0 and available / slope <= CFG.trend_horizon


def replay(shape: Callable[[float], float], span: float, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    history = host_trend.new_history()
    trend = None
    warnings = base_warnings = 0
    first = base_first = crossed = None
    forecast_error = None
    was = base_was = False
    window: deque[tuple[float, float]] = deque()
    t = 0.0
    while t <= span:
        used = min(TOTAL - 256 * MIB, max(0.0, shape(t) + rng.gauss(0, NOISE)))
        snap = HostSnapshot(t, TOTAL, int(TOTAL - used), 0, 0, None)
        host_trend.observe(history, snap, t)
        trend = host_trend.forecast(history, trend, snap, CFG)
        if trend.warned and not was:
            warnings += 1
            if first is None:
                first = t
                true_rate = (shape(t) - shape(t - HOUR)) / HOUR if t >= HOUR else None
                if true_rate and trend.exhausted_in:
                    forecast_error = trend.exhausted_in / (snap.mem_available / true_rate)
        was = trend.warned
        if crossed is None and shape(t) >= WARN_AT:
            crossed = t
        window.append((t, used))
        while window[0][0] < t - HOUR:
            window.popleft()
        if round(t / STEP) % 5 == 0:
            warned = naive(window, snap.mem_available)
            if warned and not base_was:
                base_warnings += 1
                base_first = t if base_first is None else base_first
            base_was = warned
        t += STEP
    return {"warnings": warnings, "first": first, "crossed": crossed, "forecast_ratio": forecast_error,
            "baseline_warnings": base_warnings, "baseline_first": base_first}


def hours(v: float | None) -> str:
    return "never" if v is None else f"{v / HOUR:.2f} h"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = p.parse_args()
    det, fa = [], []
    for label, shape, span in LEAKS:
        r = replay(shape, span)
        lead = None if r["first"] is None or r["crossed"] is None else r["crossed"] - r["first"]
        base_lead = (None if r["baseline_first"] is None or r["crossed"] is None
                     else r["crossed"] - r["baseline_first"])
        det.append({"series": label, **r, "lead": lead, "baseline_lead": base_lead})
    for label, shape in BENIGN:
        fa.append({"series": label, **replay(shape, 24 * HOUR)})
    text = table(["leak", "first warning", "RAM 85 % crossed", "lead", "forecast ÷ truth", "warnings",
                  "baseline first warning", "baseline lead", "baseline warnings"],
                 [[d["series"], hours(d["first"]), hours(d["crossed"]), hours(d["lead"]),
                   "-" if d["forecast_ratio"] is None else f"{d['forecast_ratio']:.2f}", d["warnings"],
                   hours(d["baseline_first"]), hours(d["baseline_lead"]), d["baseline_warnings"]] for d in det])
    text += "\n\n" + table(["benign, 24 h", "warnings", "first warning", "baseline warnings"],
                           [[f["series"], f["warnings"], hours(f["first"]), f["baseline_warnings"]] for f in fa])
    emit("host RAM trend, pure replays", text, {"leaks": det, "benign": fa}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
