"""Leak detection replayed through the pure policies: how soon each leak is called, at which scale, and how many
alarms (transitions into "leak") each series raises, benign or not.

Every series is 2 GiB plus its shape plus Gaussian noise of 2 MiB (seeded), one sample every 2 s. The policy is
memwarden.policies.leak_scales with the shipped defaults (containers.leak_window 24h, leak_min_rate 1MiB/h),
fed sample by sample with its previous verdict. Baseline, same run, same samples: memwarden.policies.leak.assess
with the previous defaults (one 10-min window, 1MiB/min), judged every 10 s over the trailing window.
Benign rhythms start at the top of their cycle, so a sawtooth's first rise follows a drop from its top; a smooth
rhythm's first rise from its trough, never seen before, cannot be told from a leak (a "cold" daily cycle,
starting at its trough, is shown too).
Run by `bench/leak_detection.py --replay`; `--replay --seeds N` replays every series with N other seeds
(sweep) and counts the seeds that miss a goal.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable

from memwarden.policies import leak, leak_scales

MIB = 1 << 20
GIB = 1 << 30
HOUR = 3600.0
STEP = 2.0
BASELINE_EVERY = 5  # samples: the baseline is judged every 10 s (a full window per call)
SETTINGS = leak_scales.LeakSettings.of(24 * HOUR, MIB / HOUR)
OLD_WINDOW, OLD_RATE = 600.0, MIB / 60


def teeth(period: float, height: float) -> Callable[[float], float]:
    """Starts at its top, drops, climbs linearly for a period, drops again."""
    return lambda t: height * (((t + period - STEP) % period) / period)


def leaking(rate: float, saw: Callable[[float], float] | None = None) -> Callable[[float], float]:
    return lambda t: rate * t + (saw(t) if saw else 0.0)


LEAKS = [  # label, shape, replayed for, goal (s)
    ("20 MB/s", leaking(20e6), 360.0, 10.0),
    ("1 MB/s", leaking(1e6), 600.0, 60.0),
    ("60 MB/h", leaking(60e6 / HOUR), 3 * HOUR, 900.0),
    ("10 MB/h", leaking(10e6 / HOUR), 6 * HOUR, 3 * HOUR),
    ("20 MB/s + 5-min sawtooth", leaking(20e6, teeth(300, 300 * MIB)), 360.0, None),
    ("1 MB/s + 5-min sawtooth", leaking(1e6, teeth(300, 300 * MIB)), 1800.0, None),
    ("60 MB/h + 5-min sawtooth", leaking(60e6 / HOUR, teeth(300, 300 * MIB)), 6 * HOUR, None),
    ("10 MB/h + 5-min sawtooth", leaking(10e6 / HOUR, teeth(300, 300 * MIB)), 12 * HOUR, None),
]
BENIGN = [
    ("steady", lambda t: 0.0),
    ("sawtooth 1 min, 300 MiB", teeth(60, 300 * MIB)),
    ("sawtooth 5 min, 300 MiB", teeth(300, 300 * MIB)),
    ("sawtooth 15 min, 300 MiB", teeth(900, 300 * MIB)),
    ("sawtooth 1 h, 300 MiB", teeth(3600, 300 * MIB)),
    ("daily cycle ±300 MiB", lambda t: 300 * MIB * math.cos(2 * math.pi * t / (24 * HOUR))),
    ("daily cycle ±300 MiB, cold (starts at its trough)",
     lambda t: -300 * MIB * math.cos(2 * math.pi * t / (24 * HOUR))),
    ("warm-up +1 GiB (τ 5 min)", lambda t: -GIB * math.exp(-t / 300)),
]


def replay(shape: Callable[[float], float], seconds: float, seed: int) -> dict:
    rnd = random.Random(seed)
    history, previous = leak_scales.LeakHistory(SETTINGS), None
    window: deque[leak.Sample] = deque()
    new = {"first": None, "scale": None, "alarms": 0, "leaking_at_end": False}
    old = {"first": None, "alarms": 0}
    was_old = False
    new_cpu = old_cpu = 0.0
    for i in range(int(seconds / STEP) + 1):
        t = i * STEP
        s = leak.Sample(t, int(2 * GIB + shape(t) + rnd.gauss(0, 2 * MIB)))
        c0 = time.process_time()
        history.add(s)
        v = leak_scales.verdict_of(history, previous)
        new_cpu += time.process_time() - c0
        if v.leaking and not (previous is not None and previous.leaking):
            new["alarms"] += 1
            if new["first"] is None:
                new["first"], new["scale"] = t, v.scale
        previous = v
        window.append(s)
        while window[0].t < t - OLD_WINDOW:
            window.popleft()
        if i % BASELINE_EVERY == 0:
            c0 = time.process_time()
            is_old = leak.assess(list(window), OLD_WINDOW, OLD_RATE).leaking
            old_cpu += time.process_time() - c0
            if is_old and not was_old:
                old["alarms"] += 1
                old["first"] = t if old["first"] is None else old["first"]
            was_old = is_old
    new["leaking_at_end"] = bool(previous and previous.leaking)
    return {"new": new, "old": old, "samples": i + 1, "new_cpu_s": new_cpu, "old_cpu_s": old_cpu}


def run(seed: int = 16) -> tuple[list[list], list[list], dict]:
    det_rows, fa_rows, results = [], [], {"detection": {}, "false_alarms": {}}
    for n, (label, shape, seconds, goal) in enumerate(LEAKS):
        r = replay(shape, seconds, seed + n)
        results["detection"][label] = r
        det_rows.append([label, f"{seconds / 60:g} min", r["new"]["first"], r["new"]["scale"],
                         r["new"]["alarms"], "yes" if r["new"]["leaking_at_end"] else "no", goal,
                         r["old"]["first"], r["old"]["alarms"]])
    for n, (label, shape) in enumerate(BENIGN):
        r = replay(shape, 24 * HOUR, seed + 100 + n)
        results["false_alarms"][label] = r
        fa_rows.append([label, r["new"]["alarms"], r["new"]["first"], r["old"]["alarms"],
                        round(r["new_cpu_s"], 1), round(r["old_cpu_s"], 1)])
    return det_rows, fa_rows, results


def sweep(seeds: int, first_seed: int = 1000) -> tuple[list[list], dict]:
    """Every series replayed with `seeds` seeds: for a leak, the seeds whose first alarm missed its goal and those
    with other than one alarm; for a benign series, the seeds with any alarm and the alarms in all."""
    rows, results = [], {}
    for n, (label, shape, seconds, goal) in enumerate(LEAKS):
        runs = [replay(shape, seconds, first_seed + 1000 * n + k)["new"] for k in range(seeds)]
        firsts = [r["first"] for r in runs]
        late = sum(1 for f in firsts if f is None or (goal is not None and f > goal))
        not_one = sum(1 for r in runs if r["alarms"] != 1)
        worst = None if None in firsts else max(firsts)
        results[label] = {"late": late, "not_one_alarm": not_one, "firsts": firsts,
                          "alarms": [r["alarms"] for r in runs]}
        rows.append([label, seeds, late if goal is not None else "-", not_one, worst])
    for n, (label, shape) in enumerate(BENIGN):
        runs = [replay(shape, 24 * HOUR, first_seed + 1000 * (n + len(LEAKS)) + k)["new"] for k in range(seeds)]
        alarmed = sum(1 for r in runs if r["alarms"])
        results[label] = {"seeds_with_alarms": alarmed, "alarms": [r["alarms"] for r in runs]}
        rows.append([label, seeds, "-", alarmed, sum(r["alarms"] for r in runs)])
    return rows, results
