"""What tells a rhythm or a warm-up from a leak at the short scales of policies/leak_scales.py, as pure functions.

- A *drop* is a sharp fall between two samples. A rise after it may only be the rhythm returning to the top it
  fell from (a sawtooth's first tooth, watched from its top), so at a scale whose envelope traces that rise the
  floor must climb clearly above the top before it is a leak (rhythm_top).
- A *warm-up* rises fast, then slower and slower towards its plateau; a leak's rise does not slow. A young series
  (under YOUNG seconds) whose least-squares curvature since its first sample stands clearly under zero is warming
  up (YoungFit), and so is any rise whose envelope's recent half climbs clearly slower than its older half
  (decelerating).
- A *fast* leak is one no rhythm or warm-up reaches: it would double the working set within FAST_DOUBLING at
  FAST_MIN_RATE or more, or fill the limit or the host's available RAM within FAST_EXHAUSTION. Only a fast leak is
  called under FAST_SCALE (but at the longest scale, when containers.leak_window is shorter), and a fast leak is
  called whatever the shape of its rise.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from memwarden.policies.leak import theil_sen

DROP_JITTER = 8.0  # a drop is a fall between two samples of at least this many jitter units (and DROP_MIN)
DROP_MIN = float(1 << 20)  # bytes: no smaller fall is a drop, however quiet the series
DROPS_KEPT = 16  # the tops of the latest drops kept (each one not overtaken by a later one as high and as deep)
RISE_BUCKETS = 2  # a scale traces the rise after a drop once this many of its buckets lie after it
DECEL = 3.0  # a rise slows when its older half outgrows its recent half by this many noise units
FAST_SCALE = 60.0  # seconds: shorter scales call only a fast leak
FAST_DOUBLING = 180.0  # seconds: a fast leak doubles the working set within this long, ...
FAST_MIN_RATE = float(8 << 20)  # bytes/s: ... at this rate at least (a small container's rhythm rises at MB/s); ...
FAST_EXHAUSTION = 600.0  # seconds: ... or reaches the limit or the host's available RAM within this long
YOUNG = 600.0  # seconds: a series this young whose rise slows is warming up (scales under it call no leak) ...
YOUNG_CURVE = 1.0  # ... when its curvature since its first sample is this many standard errors under zero

Drop = tuple[float, float, float]  # (time, top, height): when it fell, from where, how far


def add_drop(drops: deque[Drop], drop: Drop, horizon: float) -> None:
    """Keep the latest drops: one overtaken by a later drop from as high and as deep goes (the later one counts
    as long), then the oldest beyond DROPS_KEPT or older than the horizon."""
    t, top, height = drop
    while drops and drops[-1][1] <= top and drops[-1][2] <= height:
        drops.pop()
    drops.append(drop)
    while len(drops) > DROPS_KEPT or drops[0][0] < t - horizon:
        drops.popleft()


def drop_of(t: float, before: int, step_before: int | None, after: int, jitter: float) -> Drop | None:
    """The fall from `before` to `after` at time t as a drop, or None. Its top is the lower of the two samples
    before it, so a lone spike's fall is no drop; its height must stand out from the jitter."""
    top = before if step_before is None else min(before, before - step_before)
    height = top - after
    if height < max(DROP_JITTER * jitter, DROP_MIN):
        return None
    return (t, float(top), float(height))


def rhythm_top(scale: float, width: float, threshold: float, now: float | None,
               drops: Sequence[Drop]) -> float | None:
    """The highest level a rise seen at a scale (its buckets `width` seconds; growth over the scale significant
    past `threshold` bytes) may only be returning to: the top before a drop. It counts once the
    scale's envelope traces the rise since the latest drop (RISE_BUCKETS of its buckets after it; before that
    its buckets hold the troughs, whose climb is what a leak under a rhythm shows), and while a rise at the
    slowest rate the scale calls would not yet have climbed the drop's height (any rhythm whose rise this scale
    sees as significant has a shorter period than that)."""
    if now is None or not drops or now - drops[-1][0] < RISE_BUCKETS * width:
        return None
    return max((top for t, top, height in drops if threshold <= 0 or now - t < height * scale / threshold),
               default=None)


def decelerating(points: Sequence[tuple[float, float]], noise: float) -> bool:
    """The envelope's older half rose by DECEL noise units more than its recent half would have over the same
    time: a warm-up's rise towards its plateau."""
    half = len(points) // 2
    if half < 2 or len(points) - half < 2:
        return False
    span = points[-1][0] - points[0][0]
    return (theil_sen(points[:half]) - theil_sen(points[half:])) * span / 2 > DECEL * noise


def fast(slope: float, current: int, limit: int, host_available: int | None) -> bool:
    if slope <= 0:
        return False
    soon = [x for x in ((limit - current) / slope if limit > 0 else None,
                        host_available / slope if host_available is not None else None) if x is not None]
    return (slope >= FAST_MIN_RATE and current / slope <= FAST_DOUBLING) or any(x <= FAST_EXHAUSTION for x in soon)


class YoungFit:
    """A least-squares quadratic of a series' first YOUNG seconds in constant memory: its first time and value,
    then n, Σt, Σt², Σt³, Σt⁴, Σv, Σtv, Σt²v (t and v relative to the first sample)."""

    def __init__(self, sums: Sequence[float] = ()):
        self.sums = list(sums)

    def add(self, t: float, v: int) -> None:
        if not self.sums:
            self.sums = [t, float(v)] + [0.0] * 8
        t, y = t - self.sums[0], v - self.sums[1]
        if t > YOUNG:
            return
        for k, x in enumerate((1.0, t, t * t, t ** 3, t ** 4, y, t * y, t * t * y)):
            self.sums[2 + k] += x

    def young(self, now: float) -> bool:
        return len(self.sums) >= 10 and now - self.sums[0] <= YOUNG

    def warming_up(self, now: float, jitter: float) -> bool:
        """Young (under YOUNG seconds) and its curvature YOUNG_CURVE standard errors (from the jitter, σ of one
        sample) under zero: a rise that slows."""
        if not self.young(now) or self.sums[2] < 5:
            return False
        n, st, st2, st3, st4, sv, stv, st2v = self.sums[2:]
        det = n * (st2 * st4 - st3 * st3) - st * (st * st4 - st3 * st2) + st2 * (st * st3 - st2 * st2)
        if det <= 0:
            return False
        # Cramer's rule for the t² coefficient; its variance is σ² × (XᵀX)⁻¹[2][2].
        c = (n * (st2 * st2v - stv * st3) - st * (st * st2v - stv * st2) + sv * (st * st3 - st2 * st2)) / det
        return c < -YOUNG_CURVE * max(jitter, 1.0) * math.sqrt(max(0.0, (n * st2 - st * st) / det))
