import itertools
import math
import random

import pytest

from memwarden.policies.leak import (
    COVERAGE,
    MAX_POINTS,
    LeakVerdict,
    Sample,
    assess,
    drop_indices,
    idle_leak,
    resample,
    theil_sen,
    trailing_floor,
    troughs,
)

MiB = 1 << 20
GiB = 1 << 30
WINDOW = 600.0  # the default containers.leak_window (10m)
STEP = 2.0  # the default daemon.sample_interval
MIN_RATE = MiB / 60  # the default containers.leak_min_rate (1MiB/min)
T0 = 10_000.0


def series(f, window: float = WINDOW, step: float = STEP) -> list[Sample]:
    """Samples of f(t) (t seconds since the start) covering the whole window, oldest first."""
    n = round(window / step)
    return [Sample(T0 + i * step, int(f(i * step))) for i in range(n + 1)]


def sawtooth(period: float, phase: float, base: int = 500 * MiB, amplitude: int = 200 * MiB,
             trough_rate: float = 0.0):
    """A GC sawtooth: grows linearly for `period` seconds, then falls back to its trough (base + trough_rate·t)."""
    def f(t: float) -> float:
        position = (t / period + phase) % 1.0
        return base + trough_rate * t + amplitude * position
    return f


# ---- theil_sen ---------------------------------------------------------------------------------------------

def test_theil_sen_exact_line():
    points = [(float(x), 3.0 * x + 7) for x in range(10)]
    assert theil_sen(points) == pytest.approx(3.0)


def test_theil_sen_ignores_a_few_outliers():
    points = [(float(x), 2.0 * x) for x in range(20)]
    points[3] = (3.0, 1e9)
    points[11] = (11.0, -1e9)
    points[17] = (17.0, 5e8)
    assert theil_sen(points) == pytest.approx(2.0)


def test_theil_sen_negative_slope():
    assert theil_sen([(0.0, 10.0), (1.0, 8.0), (2.0, 6.0), (3.0, 4.0)]) == pytest.approx(-2.0)


@pytest.mark.parametrize("points", [[], [(1.0, 5.0)], [(1.0, 5.0), (1.0, 9.0)]])
def test_theil_sen_degenerate_inputs_are_zero(points):
    assert theil_sen(points) == 0.0


def test_theil_sen_skips_pairs_with_equal_x():
    # (1, 0) and (1, 100) would divide by zero; the remaining pairs all have slope 1.
    assert theil_sen([(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (2.0, 2.0)]) == pytest.approx(1.0)


# ---- trailing_floor ----------------------------------------------------------------------------------------

def test_trailing_floor_is_the_minimum_of_the_span_before_each_sample():
    samples = [Sample(float(t), v) for t, v in enumerate([5, 3, 4, 1, 2, 6])]
    assert trailing_floor(samples, 2.0) == [(0.0, 5), (1.0, 3), (2.0, 3), (3.0, 1), (4.0, 1), (5.0, 1)]


def test_trailing_floor_of_a_rising_series_lags_by_the_span():
    samples = [Sample(float(t), 10 * t) for t in range(6)]
    assert trailing_floor(samples, 2.0) == [(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 10), (4.0, 20), (5.0, 30)]


def test_trailing_floor_is_never_above_the_sample():
    rng = random.Random(7)
    samples = [Sample(float(t), rng.randrange(1000)) for t in range(200)]
    floor = trailing_floor(samples, 10.0)
    assert all(f <= s.working_set for (_, f), s in zip(floor, samples, strict=True))
    brute = [min(x.working_set for x in samples if s.t - 10.0 <= x.t <= s.t) for s in samples]
    assert [f for _, f in floor] == brute


def test_trailing_floor_empty():
    assert trailing_floor([], 5.0) == []


def test_troughs_are_the_minimum_after_each_drop():
    values = [5, 3, 4, 9, 1, 2, 8, 2]
    samples = [Sample(float(t), v) for t, v in enumerate(values)]
    assert troughs(samples, [3, 6]) == [(4.0, 1.0), (7.0, 2.0)]


def test_resample_keeps_short_inputs_as_they_are():
    points = [(float(i), float(i)) for i in range(MAX_POINTS)]
    out = resample(points)
    assert out == points
    assert out is not points


def test_resample_long_input_to_n_evenly_spaced_points_keeping_the_ends():
    points = [(float(i), float(i * i)) for i in range(1000)]
    out = resample(points)
    assert len(out) == MAX_POINTS
    assert out[0] == points[0] and out[-1] == points[-1]
    assert all(p in points for p in out)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(out)]
    assert max(gaps) - min(gaps) <= 1.0
    assert out == sorted(out)


def test_resample_custom_n():
    points = [(float(i), 0.0) for i in range(11)]
    assert [p[0] for p in resample(points, 3)] == [0.0, 5.0, 10.0]


# ---- drop_indices ------------------------------------------------------------------------------------------

def teeth(*levels_in_mib: tuple[int, int], per_tooth: int = 12) -> list[Sample]:
    """A sawtooth: for each (low, high), a linear ramp of `per_tooth` samples from low to high MiB."""
    values = []
    for low, high in levels_in_mib:
        values += [low + (high - low) * i / (per_tooth - 1) for i in range(per_tooth)]
    return [Sample(float(i), int(v * MiB)) for i, v in enumerate(values)]


def test_drop_indices_needs_three_samples():
    assert drop_indices([Sample(0, 100 * MiB), Sample(1, 0)]) == []


def test_drop_indices_finds_sharp_falls():
    samples = teeth((100, 300), (100, 300), (100, 300))
    assert drop_indices(samples) == [11, 23]


def test_drop_indices_ignores_falls_below_a_quarter_of_the_range():
    # Range 400 MiB: a 50 MiB dip is not a drop, the 400 MiB fall is.
    samples = teeth((100, 300), (250, 500), (100, 120))
    assert drop_indices(samples) == [23]


def test_drop_indices_ignores_falls_under_one_mebibyte():
    # A whole sawtooth of a few hundred KiB: every fall is below the 1 MiB floor.
    values = [0, 300, 600, 0, 300, 600, 0]
    assert drop_indices([Sample(float(i), v * 1024) for i, v in enumerate(values)]) == []


def test_drop_indices_ignore_jitter():
    rng = random.Random(3)
    samples = [Sample(float(i), int(GiB + rng.gauss(0, 20 * MiB))) for i in range(300)]
    assert drop_indices(samples) == []


def test_drop_indices_rising_series_has_none():
    assert drop_indices(series(lambda t: 100 * MiB + t * MiB)) == []


# ---- assess: warming ---------------------------------------------------------------------------------------

def test_warming_until_the_samples_span_coverage_of_the_window():
    full = series(lambda t: 100 * MiB + 10 * MIN_RATE * t)
    short_span = WINDOW * COVERAGE - STEP
    young = [s for s in full if s.t - T0 <= short_span]
    v = assess(young, WINDOW, MIN_RATE)
    assert v.verdict == "warming"
    assert not v.leaking
    assert v.slope == 0.0 and v.exhaustion_in is None
    assert v.samples == len(young)
    assert v.span == pytest.approx(young[-1].t - young[0].t)

    enough = [s for s in full if s.t - T0 <= WINDOW * COVERAGE]
    assert assess(enough, WINDOW, MIN_RATE).verdict == "leak"


def test_warming_with_fewer_than_five_samples_even_if_they_span_the_window():
    samples = [Sample(T0 + i * WINDOW / 3, 100 * MiB + i * 100 * MiB) for i in range(4)]
    assert assess(samples, WINDOW, MIN_RATE).verdict == "warming"


def test_warming_with_one_sample():
    v = assess([Sample(T0, 5 * MiB)], WINDOW, MIN_RATE)
    assert v.verdict == "warming" and v.span == 0.0 and v.samples == 1


# ---- assess: leak ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [2 * MIN_RATE, 10 * MIN_RATE, 50 * MiB / 60])
def test_steady_leak_is_a_leak_with_its_rate(rate):
    v = assess(series(lambda t: 300 * MiB + rate * t), WINDOW, MIN_RATE)
    assert v.verdict == "leak"
    assert v.leaking
    assert v.slope == pytest.approx(rate, rel=0.02)
    assert v.recent_slope == pytest.approx(rate, rel=0.02)
    assert v.drops == 0
    assert v.samples == len(series(lambda t: 0))
    assert v.span == pytest.approx(WINDOW)


def test_steady_leak_with_small_jitter_is_still_a_leak():
    rng = random.Random(7)
    rate = 5 * MIN_RATE
    v = assess(series(lambda t: 300 * MiB + rate * t + rng.uniform(-64 * 1024, 64 * 1024)), WINDOW, MIN_RATE)
    assert v.verdict == "leak"
    assert v.slope == pytest.approx(rate, rel=0.1)


def test_growth_below_min_rate_is_not_a_leak():
    v = assess(series(lambda t: 300 * MiB + 0.5 * MIN_RATE * t), WINDOW, MIN_RATE)
    assert v.verdict == "steady"
    assert v.slope == pytest.approx(0.5 * MIN_RATE, rel=0.05)


def test_shrinking_memory_is_steady():
    v = assess(series(lambda t: 900 * MiB - 10 * MIN_RATE * t), WINDOW, MIN_RATE)
    assert v.verdict == "steady"
    assert not v.leaking


# ---- assess: sawtooth --------------------------------------------------------------------------------------

PHASES = [i / 10 for i in range(10)]


@pytest.mark.parametrize("period", [WINDOW / 12, WINDOW / 6, WINDOW / 4.5, WINDOW / 3.5, WINDOW / 3, WINDOW / 2.5],
                         ids=lambda p: f"period={p:.0f}s")
def test_pure_gc_sawtooth_is_sawtooth_at_every_phase(period):
    """Troughs level: a sawtooth, never a leak, whatever the period (≥ 2 drops in the window) and phase."""
    verdicts = {phase: assess(series(sawtooth(period, phase)), WINDOW, MIN_RATE) for phase in PHASES}
    wrong = {phase: (v.verdict, round(v.slope / MIN_RATE, 2)) for phase, v in verdicts.items()
             if v.verdict != "sawtooth"}
    assert wrong == {}, f"period {period:.0f}s: phase → (verdict, slope in min_rate units) {wrong}"
    assert all(v.drops >= 2 for v in verdicts.values())


@pytest.mark.parametrize("period", [WINDOW / 2, WINDOW / 1.5], ids=lambda p: f"period={p:.0f}s")
def test_slow_gc_sawtooth_is_never_a_leak(period):
    """A period longer than half the window shows only one or two drops; its troughs are still level."""
    leaking = [phase for phase in PHASES if assess(series(sawtooth(period, phase)), WINDOW, MIN_RATE).leaking]
    assert leaking == [], f"period {period:.0f}s: a level-trough sawtooth judged a leak at phases {leaking}"


@pytest.mark.parametrize("period", [WINDOW / 12, WINDOW / 6, WINDOW / 3])
@pytest.mark.parametrize("phase", [0.0, 0.3, 0.7])
def test_leak_under_a_sawtooth_rising_troughs_is_a_leak(period, phase):
    rate = 3 * MIN_RATE
    v = assess(series(sawtooth(period, phase, trough_rate=rate)), WINDOW, MIN_RATE)
    assert v.verdict == "leak"
    assert v.slope >= MIN_RATE
    assert v.drops >= 2


# ---- assess: plateau, noise, spikes ------------------------------------------------------------------------

@pytest.mark.parametrize("levels_at", [0.4, 0.5])
def test_warm_up_that_levels_off_by_mid_window_is_a_plateau(levels_at):
    v = assess(series(lambda t: 200 * MiB + 10 * MIN_RATE * min(t, levels_at * WINDOW)), WINDOW, MIN_RATE)
    assert v.verdict == "plateau"
    assert not v.leaking
    assert v.slope >= MIN_RATE
    assert v.recent_slope == pytest.approx(0.0, abs=1.0)
    assert v.exhaustion_in is None


def noise(seed: int, level: int = 2 * GiB) -> list[Sample]:
    """±5 % uniform noise around a level, sampled every 2 s over the window."""
    rng = random.Random(seed)
    return series(lambda t: level * (1 + rng.uniform(-0.05, 0.05)))


@pytest.mark.parametrize("seed", range(5))
def test_flat_noise_is_steady(seed):
    v = assess(noise(seed), WINDOW, MIN_RATE)
    assert v.verdict == "steady", f"±5 % noise around 2 GiB judged {v.verdict!r} ({v.drops} drops)"


def test_flat_noise_is_never_a_leak():
    leaking = []
    for seed in range(30):
        v = assess(noise(seed), WINDOW, MIN_RATE)
        if v.leaking:
            leaking.append((seed, round(v.slope / MIN_RATE, 2)))
    assert leaking == [], f"±5 % noise judged a leak for (seed, slope in min_rate units) {leaking}"


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9, 1.0])
def test_single_spike_is_not_a_leak(where):
    samples = series(lambda t: 500 * MiB)
    k = round(where * (len(samples) - 1))
    samples[k] = Sample(samples[k].t, 4 * GiB)
    v = assess(samples, WINDOW, MIN_RATE)
    assert v.verdict == "steady"
    assert v.slope == pytest.approx(0.0, abs=1.0)
    assert v.drops <= 1


def test_constant_working_set_is_steady_with_zero_slope():
    v = assess(series(lambda t: 500 * MiB), WINDOW, MIN_RATE)
    assert v == LeakVerdict("steady", 0.0, 0.0, len(series(lambda t: 0)), WINDOW, 0)


# ---- assess: projection ------------------------------------------------------------------------------------

RATE = 10 * MiB / 60  # 10 MiB/min


def leaking_series() -> list[Sample]:
    return series(lambda t: 1 * GiB + RATE * t)


def test_projection_to_the_limit():
    samples = leaking_series()
    limit = 2 * GiB
    v = assess(samples, WINDOW, MIN_RATE, limit=limit)
    assert v.exhaustion_of == "limit"
    assert v.exhaustion_in == pytest.approx((limit - samples[-1].working_set) / RATE, rel=0.02)


def test_projection_to_the_host_without_a_limit():
    host_available = 3 * GiB
    v = assess(leaking_series(), WINDOW, MIN_RATE, limit=0, host_available=host_available)
    assert v.exhaustion_of == "host"
    assert v.exhaustion_in == pytest.approx(host_available / RATE, rel=0.02)


@pytest.mark.parametrize(("limit_headroom", "host_available", "expected"), [
    (512 * MiB, 4 * GiB, "limit"),
    (8 * GiB, 1 * GiB, "host"),
])
def test_projection_with_both_takes_the_earlier(limit_headroom, host_available, expected):
    samples = leaking_series()
    limit = samples[-1].working_set + limit_headroom
    v = assess(samples, WINDOW, MIN_RATE, limit=limit, host_available=host_available)
    assert v.exhaustion_of == expected
    assert v.exhaustion_in == pytest.approx(min(limit_headroom, host_available) / RATE, rel=0.02)


def test_projection_past_the_limit_is_zero_not_negative():
    samples = leaking_series()
    v = assess(samples, WINDOW, MIN_RATE, limit=samples[-1].working_set - MiB)
    assert v.exhaustion_of == "limit"
    assert v.exhaustion_in == 0.0


def test_no_projection_without_limit_or_host():
    v = assess(leaking_series(), WINDOW, MIN_RATE)
    assert v.verdict == "leak"
    assert v.exhaustion_in is None and v.exhaustion_of is None


def test_no_projection_when_not_leaking():
    v = assess(series(lambda t: 500 * MiB), WINDOW, MIN_RATE, limit=1 * GiB, host_available=GiB)
    assert v.exhaustion_in is None and v.exhaustion_of is None


def test_projection_is_finite():
    v = assess(leaking_series(), WINDOW, MIN_RATE, limit=4 * GiB, host_available=10 * GiB)
    assert math.isfinite(v.exhaustion_in)


# ---- idle_leak ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("working_set", "models", "expected"), [
    (25 * GiB, 0, True),
    (2 * GiB, 0, True),  # at the threshold
    (2 * GiB - 1, 0, False),
    (25 * GiB, 1, False),
    (25 * GiB, None, False),  # not a serving container, or its API did not answer
])
def test_idle_leak(working_set, models, expected):
    assert idle_leak(working_set, models, 2 * GiB) is expected
