"""Is a container leaking? A robust slope of its working set's lower envelope over a window.

The lower envelope at time t is the smallest working set from t to now (a suffix minimum). A leak raises it
steadily; a garbage collector's sawtooth does not (its troughs stay level), nor does noise. The slope is
Theil–Sen (the median of pairwise slopes), so a few outliers move nothing. A warm-up that has levelled off
shows growth over the window but none in its recent half: a plateau, not a leak.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MAX_POINTS = 24  # the envelope is resampled to this many points before Theil–Sen (O(n²) pairs)
COVERAGE = 0.8  # the samples must span this much of the window before any verdict but "warming"


@dataclass(frozen=True)
class Sample:
    t: float
    working_set: int


@dataclass(frozen=True)
class LeakVerdict:
    verdict: str  # warming | steady | sawtooth | plateau | leak
    slope: float  # bytes/s of the lower envelope over the window
    recent_slope: float  # bytes/s over the window's recent half
    samples: int
    span: float  # seconds the samples cover
    drops: int  # sharp falls seen (a sawtooth has several)
    exhaustion_in: float | None = None  # seconds until the limit (or the host's available RAM) is reached
    exhaustion_of: str | None = None  # "limit" or "host"

    @property
    def leaking(self) -> bool:
        return self.verdict == "leak"


def theil_sen(points: Sequence[tuple[float, float]]) -> float:
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for (x2, y2) in points[i + 1:]
              if x2 != x1]
    return statistics.median(slopes) if slopes else 0.0


def lower_envelope(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    low = float("inf")
    for s in reversed(samples):
        low = min(low, s.working_set)
        out.append((s.t, low))
    out.reverse()
    return out


def resample(points: Sequence[tuple[float, float]], n: int = MAX_POINTS) -> list[tuple[float, float]]:
    if len(points) <= n:
        return list(points)
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def count_drops(samples: Sequence[Sample]) -> int:
    if len(samples) < 3:
        return 0
    values = [s.working_set for s in samples]
    amplitude = max(values) - min(values)
    threshold = max(amplitude * 0.25, 1 << 20)
    return sum(1 for a, b in itertools.pairwise(values) if a - b >= threshold)


def assess(samples: Sequence[Sample], window: float, min_rate: float, limit: int = 0,
           host_available: int | None = None) -> LeakVerdict:
    """samples: oldest first, already trimmed to the window."""
    span = samples[-1].t - samples[0].t if len(samples) > 1 else 0.0
    drops = count_drops(samples)
    if len(samples) < 5 or span < window * COVERAGE:
        return LeakVerdict("warming", 0.0, 0.0, len(samples), span, drops)
    envelope = lower_envelope(samples)
    slope = theil_sen(resample(envelope))
    half = samples[-1].t - span / 2
    recent = [p for p in envelope if p[0] >= half]
    recent_slope = theil_sen(resample(recent))
    if slope >= min_rate and recent_slope >= min_rate / 2:
        verdict = "leak"
    elif slope >= min_rate:
        verdict = "plateau"
    elif drops >= 2:
        verdict = "sawtooth"
    else:
        verdict = "steady"
    exhaustion_in = exhaustion_of = None
    if verdict == "leak" and slope > 0:
        current = samples[-1].working_set
        options = []
        if limit > 0:
            options.append((max(0.0, (limit - current) / slope), "limit"))
        if host_available is not None:
            options.append((max(0.0, host_available / slope), "host"))
        if options:
            exhaustion_in, exhaustion_of = min(options)
    return LeakVerdict(verdict, slope, recent_slope, len(samples), span, drops, exhaustion_in, exhaustion_of)


def idle_leak(working_set: int, models_loaded: int | None, threshold: int) -> bool:
    """A serving container holding memory while its API says no model is loaded (story 5: 25 GB, none)."""
    return models_loaded == 0 and working_set >= threshold
