"""Leaks at several time scales at once: the working set's lower envelope judged over 10 s up to a day.

Each scale S keeps its series in BUCKETS buckets of S / BUCKETS seconds (min, max, last of the samples in each),
so a day of 2-s samples costs a few hundred numbers per scale, and every call is bounded. At each scale:
- the envelope is the bucket minima; its robust slope (Theil–Sen) times the span covered is the *growth*;
- the *noise* is the larger of the envelope's residual spread around that line (1.4826 × MAD) and the series'
  own jitter (from consecutive samples), and growth is *significant* when it exceeds SIGNIFICANCE noise units
  scaled by the estimator's spread for that many points (√(12/n)): a slope passes when the growth over the
  scale stands clear of the noise, so a fast scale needs a fast leak and a slow scale sees a slow one;
- growth that has been *undone* is a rhythm, not a leak: a leak keeps raising its floor, so the current floor
  must stand at the highest envelope of the window (up to noise) and clearly above the highest envelope of the
  retained past (up to the longest scale before the window). A sawtooth, a daily cycle or a cache that fills
  and empties only returns to levels it held before; the troughs of a rhythm that climb are a leak again, at a
  scale whose buckets are longer than its period. A rise after a sharp drop must also climb clearly above the
  top it fell from, at the scales that trace that rise (policies/leak_shapes.py: a sawtooth watched from its
  top never is a leak);
- a new leak is called at a scale only when its rise does not slow there or at the next longer scale, nor since
  a young series' first sample (a warm-up), and under a minute only when it is fast: growth no rhythm or
  warm-up reaches (leak_shapes.fast). A fast leak is called whatever its shape. A smooth rhythm never seen
  before and watched from its trough (a daily cycle's first rising half) is still a leak at its scale until
  it is undone.
Hysteresis: a leak verdict holds at its scale while the growth there stays above half the significance and is
not undone, so a slope near the threshold does not flap. A leak under a rhythm is undone at every drop and seen
again only at a later period's new high; so a leak undone by a drop still holds for UNDONE_HOLD spans of its
scale (at most UNDONE_HOLD_MAX) after its evidence was last seen: one alarm per leak, not one per tooth. So
does a leak whose growth still climbs at a leak's rate but no longer clearly (a rhythm aliased in its buckets,
until a longer scale sees the troughs climb); one whose growth is gone is released at once.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from memwarden.policies.leak import LeakVerdict, Sample, theil_sen
from memwarden.policies.leak_shapes import (
    DROP_MIN,
    FAST_SCALE,
    YOUNG,
    Drop,
    YoungFit,
    add_drop,
    decelerating,
    drop_of,
    fast,
    rhythm_top,
)

BUCKETS = 12  # per scale: the envelope's points (Theil–Sen over 66 pairs)
LADDER = (10.0, 60.0, 600.0, 3600.0, 6 * 3600.0, 24 * 3600.0)  # the scales, up to containers.leak_window
COVERAGE = 0.8  # a scale judges once its samples span this share of it
SIGNIFICANCE = 5.5  # growth over a scale must exceed this many noise units (a 5.5σ event: none in a day)
RELEASE = 0.5  # a held leak is released when its growth falls under this share of the significance
UNDONE = 3.0  # the floor may sit this many noise units under the highest envelope seen and still be a leak
PAST_POINTS = 256  # the retained past's maxima are kept at a width of at most horizon / PAST_POINTS
JITTER_STEPS = 256  # consecutive differences kept for the series' own jitter
MIN_POINTS = 4
UNDONE_HOLD = 15.0  # spans of its scale a leak undone by a drop still holds after its evidence was last seen
UNDONE_HOLD_MAX = 3600.0  # seconds: the longest such hold, whatever the scale
DROP_JITTER_STEPS = 16  # steps of the jitter before it weighs on what counts as a drop


@dataclass(frozen=True)
class LeakSettings:
    scales: tuple[float, ...]  # seconds, shortest first
    min_rate: float  # bytes/s: no slope under this is a leak, however clear of the noise

    @classmethod
    def of(cls, window: float, min_rate: float) -> LeakSettings:
        """containers.leak_window is the longest scale; the ladder's shorter rungs come with it."""
        return cls((*(s for s in LADDER if s < window), window), min_rate)


@dataclass(frozen=True)
class ScaleReading:
    scale: float
    slope: float  # bytes/s of the envelope
    growth: float  # bytes over the span covered
    noise: float  # bytes
    threshold: float  # bytes: growth beyond this is significant
    undone: bool  # the floor stands clearly under a higher envelope seen before
    covered: bool  # the samples span COVERAGE of the scale
    points: int
    decelerating: bool = False  # the envelope's recent half rises clearly slower than its older half


@dataclass(frozen=True)
class ScaleState:
    """One scale's state as plain data: enough to rebuild it exactly (LeakHistory.state / from_state)."""
    scale: float
    index: int  # the open bucket's index
    buckets: tuple[tuple[float, ...], ...]  # (start, min, max, last, count, time of the min), oldest first
    coarse: tuple[float, float] | None  # (start, highest bucket minimum) of the past stretch being filled
    past: tuple[tuple[float, float], ...]  # (start, highest minimum) of the retained past, a monotonic max queue
    reading: ScaleReading | None  # the reading of the buckets closed so far
    stale: bool  # a bucket closed since that reading


@dataclass(frozen=True)
class HistoryState:
    """A LeakHistory as plain data (numbers, tuples, frozen dataclasses): what the state database keeps."""
    settings: LeakSettings
    first: float | None
    last: Sample | None
    count: int
    step: int | None  # the last step between consecutive samples, bytes
    steps: tuple[float, ...]  # the jitter's second differences, oldest first
    scales: tuple[ScaleState, ...]
    drops: tuple[Drop, ...] = ()  # (time, top, height) of the latest drops, oldest first (policies/leak_shapes.py)
    young: tuple[float, ...] = ()  # the sums of a quadratic fit of the series' first seconds (leak_shapes.YoungFit)


class _Scale:
    """One scale's buckets over its window, and the running maximum of its envelope over the retained past."""

    def __init__(self, scale: float, horizon: float):
        self.scale = scale
        self.width = scale / BUCKETS
        self.horizon = horizon
        self.buckets: deque[list[float]] = deque()  # [start, min, max, last, count, time of the min]
        self.past_width = max(self.width, horizon / PAST_POINTS)
        self.coarse: list[float] | None = None  # [start, highest bucket minimum] of the past stretch being filled
        self.past: deque[tuple[float, float]] = deque()  # (start, highest minimum): a monotonic max queue
        self.reading: ScaleReading | None = None
        self.stale = True
        self.index = 0

    def add(self, t: float, v: float) -> None:
        b = self.buckets[-1] if self.buckets else None
        index = math.floor(t / self.width)  # an index, not a start time: float starts can repeat a bucket
        if b is None or index > self.index:
            self.index = index
            self.buckets.append([index * self.width, v, v, v, 1, t])
            self.stale = True
            while self.buckets[0][0] < t - self.scale:
                self._retire(self.buckets.popleft())
        else:
            if v < b[1]:
                b[1], b[5] = v, t
            b[2], b[3], b[4] = max(b[2], v), v, b[4] + 1

    def _retire(self, b: list[float]) -> None:
        c = self.coarse
        if c is None or b[0] >= c[0] + self.past_width:
            if c is not None:
                while self.past and self.past[-1][1] <= c[1]:
                    self.past.pop()
                self.past.append((c[0], c[1]))
            self.coarse = c = [b[0], b[1]]
        c[1] = max(c[1], b[1])  # the highest envelope (bucket minimum) of the stretch
        while self.past and self.past[0][0] < b[0] - self.horizon:
            self.past.popleft()

    def state(self) -> ScaleState:
        return ScaleState(self.scale, self.index, tuple(tuple(b) for b in self.buckets),
                          None if self.coarse is None else (self.coarse[0], self.coarse[1]), tuple(self.past),
                          self.reading, self.stale)

    def restore(self, state: ScaleState) -> None:
        self.index = state.index
        self.buckets = deque(list(b) for b in state.buckets)
        self.coarse = None if state.coarse is None else list(state.coarse)
        self.past = deque(state.past)
        self.reading, self.stale = state.reading, state.stale

    def past_max(self) -> float | None:
        values = ([self.past[0][1]] if self.past else []) + ([self.coarse[1]] if self.coarse else [])
        return max(values) if values else None


def judge_scale(scale: float, points: Sequence[tuple[float, float]], counts: Sequence[int], past_max: float | None,
                jitter: float, span: float, now: float | None = None,
                drops: Sequence[Drop] = ()) -> ScaleReading:
    """Pure: one scale's envelope (time and value of each bucket's minimum), samples per bucket, the highest
    envelope before the window, the series' jitter (σ of one sample), how long the samples have been coming,
    the time of the latest sample and the latest drops (time, top, height), oldest first."""
    n = len(points)
    covered = span >= scale * COVERAGE and n >= MIN_POINTS
    if n < 2:
        return ScaleReading(scale, 0.0, 0.0, jitter, math.inf, False, False, n)
    slope = theil_sen(points)
    intercept = statistics.median(v - slope * t for t, v in points)
    residuals = [abs(v - (intercept + slope * t)) for t, v in points]
    # The minimum of many samples wanders less than one sample: half the jitter once buckets hold ten or more.
    per_point = jitter * (0.5 if statistics.median(counts) >= 10 else 1.0)
    noise = max(1.4826 * statistics.median(residuals), per_point)
    threshold = SIGNIFICANCE * noise * math.sqrt(12 / n)
    growth = slope * (points[-1][0] - points[0][0] + scale / BUCKETS)
    # Within the window the floor may not have fallen from a higher envelope; against the past (before the
    # window) it must be a new high: a rhythm's rise only returns to levels its earlier periods held.
    floor = points[-1][1]
    undone = max(v for _, v in points) - floor > UNDONE * noise or (
        past_max is not None and floor - past_max <= UNDONE * noise)
    top = rhythm_top(scale, scale / BUCKETS, threshold, now, drops)
    undone = undone or (top is not None and floor - top <= threshold)  # beyond the top, growth that counts
    return ScaleReading(scale, slope, growth, noise, threshold, undone, covered, n,
                        decelerating(points, noise))


class LeakHistory:
    """A container's samples so far, downsampled per scale: bounded memory whatever the span."""

    def __init__(self, settings: LeakSettings):
        self.settings = settings
        horizon = max(settings.scales)
        self.scales = [_Scale(s, horizon) for s in settings.scales]
        self.first: float | None = None
        self.last: Sample | None = None
        self.steps: deque[float] = deque(maxlen=JITTER_STEPS)
        self.count = 0
        self.step: int | None = None
        self.drops: deque[Drop] = deque()
        self.young = YoungFit()

    def add(self, sample: Sample) -> None:
        if self.last is not None:
            step = sample.working_set - self.last.working_set
            # A few steps say nothing of the jitter (a first fill would pass for it): DROP_MIN alone until then.
            jitter = self.jitter() if len(self.steps) >= DROP_JITTER_STEPS else 0.0
            drop = drop_of(sample.t, self.last.working_set, self.step, sample.working_set, jitter) \
                if -step >= DROP_MIN else None
            if drop is not None:
                add_drop(self.drops, drop, max(self.settings.scales))
            if self.step is not None:
                self.steps.append(abs(step - self.step))
            self.step = step
        self.first = sample.t if self.first is None else self.first
        self.young.add(sample.t, sample.working_set)
        self.last = sample
        self.count += 1
        for s in self.scales:
            s.add(sample.t, float(sample.working_set))

    def state(self) -> HistoryState:
        """Lossless: LeakHistory.from_state(h.state()) judges every later sample exactly as h would."""
        return HistoryState(self.settings, self.first, self.last, self.count, self.step, tuple(self.steps),
                            tuple(s.state() for s in self.scales), tuple(self.drops), tuple(self.young.sums))

    @classmethod
    def from_state(cls, state: HistoryState) -> LeakHistory:
        if tuple(s.scale for s in state.scales) != state.settings.scales:
            raise ValueError(f"leak history: scales {[s.scale for s in state.scales]} do not match the settings' "
                             f"{list(state.settings.scales)}")
        history = cls(state.settings)
        history.first, history.last, history.count, history.step = state.first, state.last, state.count, state.step
        history.steps.extend(state.steps)
        history.drops.extend(tuple(d) for d in state.drops)
        history.young = YoungFit(state.young)
        for scale, saved in zip(history.scales, state.scales, strict=True):
            scale.restore(saved)
        return history

    def warming_up(self) -> bool:
        """A young series whose rise slows (leak_shapes.YoungFit); the jitter is only worked out while young."""
        return (self.last is not None and self.young.young(self.last.t)
                and self.young.warming_up(self.last.t, self.jitter()))

    def jitter(self) -> float:
        # Second differences cancel a steady slope; of Gaussian noise they have σ√6, so a median |.| of 1.652 σ.
        return statistics.median(self.steps) / 1.652 if self.steps else 0.0

    def readings(self) -> list[ScaleReading]:
        """Each scale's reading, recomputed only when a bucket has closed (bounded work per sample)."""
        assert self.last is not None and self.first is not None
        span = self.last.t - self.first
        jitter = max(self.jitter(), 1.0)
        out = []
        for s in self.scales:
            if s.stale or s.reading is None:
                closed = list(s.buckets)[:-1] if len(s.buckets) > 1 else list(s.buckets)
                s.reading = judge_scale(s.scale, [(b[5], b[1]) for b in closed], [int(b[4]) for b in closed],
                                        s.past_max(), jitter, span, self.last.t, tuple(self.drops))
                s.stale = False
            out.append(s.reading)
        return out


def decide(readings: Sequence[ScaleReading], previous: LeakVerdict | None, settings: LeakSettings,
           samples: int, span: float, current: int, limit: int = 0,
           host_available: int | None = None, now: float | None = None, warm_up: bool = False) -> LeakVerdict:
    """Pure: the verdict from each scale's reading and the previous verdict (its scale holds a leak until the
    evidence there is gone); `now`, the time of the latest sample, times the hold of a leak undone by a drop."""
    def leaks(r: ScaleReading, share: float) -> bool:
        return (r.covered and not r.undone and r.growth > share * r.threshold and r.slope >= settings.min_rate)

    def calls(i: int, r: ScaleReading) -> bool:
        """A new leak at this scale: clear growth, not a warm-up's slowing rise here or at the next longer scale
        judged, and at the shortest scales fast enough that no rhythm or warm-up rises so fast."""
        longer = readings[i + 1] if i + 1 < len(readings) else None
        if not leaks(r, 1.0):
            return False
        if fast(r.slope, current, limit, host_available):
            return True
        # Under a minute only a fast leak, unless the scale is the longest there is (a leak_window under a minute).
        return ((r.scale >= FAST_SCALE or longer is None) and not r.decelerating
                and not (longer is not None and longer.decelerating)
                and not (warm_up and r.scale < YOUNG))

    seen: ScaleReading | None = None
    if previous is not None and previous.leaking and previous.scale is not None:
        held = [r for r in readings if r.scale == previous.scale]
        if held and leaks(held[0], RELEASE):
            seen = held[0]
    if seen is None:
        seen = next((r for i, r in enumerate(readings) if calls(i, r)), None)
    if seen is None and previous is not None and previous.leaking and _hold(readings, previous, now, settings.min_rate):
        return dataclasses.replace(previous, samples=samples, span=span)
    if seen is not None:
        verdict = "leak"
    elif not any(r.covered for r in readings):
        verdict = "warming"
    elif any(r.covered and r.undone and r.growth > r.threshold and r.slope >= settings.min_rate for r in readings):
        verdict = "sawtooth"  # growth that would be a leak, undone: a rhythm (a few KiB that come and go are not)
    else:
        verdict = "steady"
    shown = seen or next((r for r in reversed(readings) if r.covered), readings[0])
    exhaustion_in = exhaustion_of = None
    if seen is not None and seen.slope > 0:
        options = []
        if limit > 0:
            options.append((max(0.0, (limit - current) / seen.slope), "limit"))
        if host_available is not None:
            options.append((max(0.0, host_available / seen.slope), "host"))
        if options:
            exhaustion_in, exhaustion_of = min(options)
    return LeakVerdict(verdict, shown.slope, shown.slope, samples, span, 0, exhaustion_in, exhaustion_of,
                       scale=shown.scale if seen is not None else None, growth=shown.growth, noise=shown.noise,
                       seen_at=now if seen is not None else None)


def _hold(readings: Sequence[ScaleReading], previous: LeakVerdict, now: float | None, min_rate: float) -> bool:
    """A leak whose evidence a drop undid, or whose growth still climbs at a leak's rate but no longer clearly
    (a rhythm aliased in its buckets), holds a while yet: until a later period's new high or a longer scale shows
    it again. A leak whose growth is gone (its slope under the min rate) is released at once."""
    if now is None or previous.seen_at is None or previous.scale is None:
        return False
    at_scale = [r for r in readings if r.scale == previous.scale]
    if not at_scale or not (at_scale[0].undone or at_scale[0].slope >= max(min_rate, 1.0)):
        return False
    return now - previous.seen_at < min(UNDONE_HOLD * previous.scale, UNDONE_HOLD_MAX)


def verdict_of(history: LeakHistory, previous: LeakVerdict | None = None, limit: int = 0,
               host_available: int | None = None) -> LeakVerdict:
    assert history.last is not None and history.first is not None
    return decide(history.readings(), previous, history.settings, history.count, history.last.t - history.first,
                  history.last.working_set, limit, host_available, history.last.t,
                  history.warming_up())


def judge(samples: Iterable[Sample], settings: LeakSettings, previous: LeakVerdict | None = None,
          limit: int = 0, host_available: int | None = None) -> LeakVerdict:
    """The pure entry: a container's samples so far (oldest first, any span), its settings
    (LeakSettings.of(containers.leak_window, containers.leak_min_rate)) and the previous verdict → the verdict."""
    history = LeakHistory(settings)
    for s in samples:
        history.add(s)
    if history.last is None:
        return LeakVerdict("warming", 0.0, 0.0, 0, 0.0, 0)
    return verdict_of(history, previous, limit, host_available)
