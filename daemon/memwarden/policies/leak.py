"""Is a container leaking? A robust slope of its working set's floor over a window.

Two shapes of growth are told apart:
- with sharp drops (a garbage collector's sawtooth, a cache flush), the troughs after each drop are what a leak
  raises: a leak is troughs that climb (Theil–Sen over the segment minima, at least three of them); level
  troughs are a sawtooth, however tall the teeth;
- without drops, the floor is a trailing minimum over an eighth of the window (noise cannot raise it, a leak
  raises it at its own rate), fitted with Theil–Sen (the median of pairwise slopes, so outliers move nothing).
  Growth over the window that has stopped in its recent half is a warm-up *plateau*, not a leak.
A drop must stand out from the series' own jitter (eight times the median step), so noise is never a sawtooth.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

MAX_POINTS = 24  # the floor is resampled to this many points before Theil–Sen (O(n²) pairs)
COVERAGE = 0.8  # the samples must span this much of the window before any verdict but "warming"
FLOOR_SPAN = 1 / 8  # the trailing minimum looks back this share of the window
JITTER_FACTOR = 8  # a drop is at least this many median steps
MIN_TROUGHS = 2  # a leak under a sawtooth needs this many troughs (drops) to show their climb
# ... and they must climb at least this much in all: the same floor under which a fall is no drop. On a real
# engine a trough moves by a few hundred KiB from one tooth to the next (the process that just freed the memory
# exiting, page tables, kernel accounting), and with two troughs half a window apart that alone exceeded the
# default 1MiB/min: a level-trough sawtooth (period ≈ window / 2) was called a leak about once a period.
MIN_TROUGH_CLIMB = 1 << 20


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
    scale: float | None = None  # seconds: the time scale that saw the leak (policies/leak_scales.py)
    growth: float = 0.0  # bytes the envelope grew over that scale (or the longest one judged)
    noise: float = 0.0  # bytes: the envelope's noise at that scale
    seen_at: float | None = None  # the sample time at which a leak's evidence was last seen (leak_scales.py)

    @property
    def leaking(self) -> bool:
        return self.verdict == "leak"


def theil_sen(points: Sequence[tuple[float, float]]) -> float:
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for (x2, y2) in points[i + 1:]
              if x2 != x1]
    return statistics.median(slopes) if slopes else 0.0


def trailing_floor(samples: Sequence[Sample], span: float) -> list[tuple[float, float]]:
    """At each sample, the smallest working set of the `span` seconds before it (a monotonic deque: O(n))."""
    out: list[tuple[float, float]] = []
    window: deque[Sample] = deque()
    for s in samples:
        while window and window[-1].working_set >= s.working_set:
            window.pop()
        window.append(s)
        while window[0].t < s.t - span:
            window.popleft()
        out.append((s.t, window[0].working_set))
    return out


def resample(points: Sequence[tuple[float, float]], n: int = MAX_POINTS) -> list[tuple[float, float]]:
    if len(points) <= n:
        return list(points)
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def drop_indices(samples: Sequence[Sample]) -> list[int]:
    """Indices i where the working set falls sharply from sample i to i+1: by a quarter of the series' range,
    at least 1 MiB, and at least eight times its typical step (the largest jump of Gaussian jitter over a few
    hundred samples is about five times its median, so jitter never counts)."""
    values = [s.working_set for s in samples]
    if len(values) < 3:
        return []
    steps = [abs(b - a) for a, b in itertools.pairwise(values)]
    threshold = max((max(values) - min(values)) * 0.25, 1 << 20, JITTER_FACTOR * statistics.median(steps))
    return [i for i, (a, b) in enumerate(itertools.pairwise(values)) if a - b >= threshold]


def troughs(samples: Sequence[Sample], drops: Sequence[int]) -> list[tuple[float, float]]:
    """The lowest sample after each drop, up to the next one. The stretch before the first drop is left out: the
    window may have begun halfway up a tooth, and its lowest point is no trough."""
    bounds = [*(i + 1 for i in drops), len(samples)]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            low = min(samples[lo:hi], key=lambda s: s.working_set)
            out.append((low.t, float(low.working_set)))
    return out


def is_spike(samples: Sequence[Sample], drop: int) -> bool:
    """A drop that ends a short excursion (at most two samples high) rather than a tooth grown over time."""
    before = samples[: drop + 1]
    base = min(s.working_set for s in before)
    height = samples[drop].working_set - samples[drop + 1].working_set
    return sum(1 for s in before if s.working_set > base + height / 2) <= 2


def assess(samples: Sequence[Sample], window: float, min_rate: float, limit: int = 0,
           host_available: int | None = None) -> LeakVerdict:
    """samples: oldest first, already trimmed to the window."""
    span = samples[-1].t - samples[0].t if len(samples) > 1 else 0.0
    drops = drop_indices(samples)
    if len(samples) < 5 or span < window * COVERAGE:
        return LeakVerdict("warming", 0.0, 0.0, len(samples), span, len(drops))
    if len(drops) >= MIN_TROUGHS or (len(drops) == 1 and not is_spike(samples, drops[0])):
        points = troughs(samples, drops)
        slope = recent_slope = theil_sen(points)
        climb = slope * (points[-1][0] - points[0][0]) if points else 0.0
        verdict = ("leak" if slope >= min_rate and len(points) >= MIN_TROUGHS and climb >= MIN_TROUGH_CLIMB
                   else "sawtooth")
    else:  # no drops, or a lone spike the trailing floor looks past
        floor = trailing_floor(samples, window * FLOOR_SPAN)
        slope = theil_sen(resample(floor))
        half = samples[-1].t - span / 2
        recent_slope = theil_sen(resample([p for p in floor if p[0] >= half]))
        if slope >= min_rate and recent_slope >= min_rate / 2:
            verdict = "leak"
        elif slope >= min_rate:
            verdict = "plateau"
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
    return LeakVerdict(verdict, slope, recent_slope, len(samples), span, len(drops), exhaustion_in, exhaustion_of)


def idle_leak(working_set: int, models_loaded: int | None, threshold: int) -> bool:
    """A serving container holding memory while its API says no model is loaded (story 5: 25 GB, none)."""
    return models_loaded == 0 and working_set >= threshold
