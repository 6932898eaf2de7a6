import dataclasses
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwarden.policies.leak import Sample
from memwarden.policies.leak_scales import (
    BUCKETS,
    PAST_POINTS,
    UNDONE_HOLD,
    UNDONE_HOLD_MAX,
    LeakHistory,
    LeakSettings,
    ScaleReading,
    decide,
    judge,
    verdict_of,
)

MiB = 1 << 20
GiB = 1 << 30
HOUR = 3600.0
DAY = 24 * HOUR
SETTINGS = LeakSettings.of(DAY, MiB / HOUR)  # the defaults: containers.leak_window 24h, leak_min_rate 1MiB/h


def replay(f, seconds: float, step: float = 2.0, seed: int = 7, noise: float = 2 * MiB):
    """Feed 2 GiB + f(t) + Gaussian noise into a history, judging every sample with its previous verdict.
    Returns (first leak time, its scale, number of transitions into leak, last verdict, the history)."""
    rnd = random.Random(seed)
    history, previous, first, alarms = LeakHistory(SETTINGS), None, None, 0
    for i in range(int(seconds / step) + 1):
        t = i * step
        history.add(Sample(t, int(2 * GiB + f(t) + rnd.gauss(0, noise))))
        v = verdict_of(history, previous)
        if v.leaking and not (previous is not None and previous.leaking):
            alarms += 1
            first = first or (t, v.scale)
        previous = v
    return first, alarms, previous, history


def teeth(period: float, height: float):
    """A sawtooth that starts at its top: drops, climbs linearly for a period, drops again."""
    return lambda t: height * (((t + period - 2.0) % period) / period)


@pytest.mark.parametrize(("rate", "seconds", "scale", "within"), [
    (20e6, 60, 10.0, 10), (1e6, 120, 60.0, 60), (60e6 / HOUR, 1800, 600.0, 900),
    (10e6 / HOUR, 4 * HOUR, HOUR, 3 * HOUR),
])
def test_each_scale_sees_its_leak_once_and_names_itself(rate, seconds, scale, within):
    first, alarms, last, _ = replay(lambda t: rate * t, seconds)
    assert first is not None and first[0] <= within and first[1] == scale
    assert alarms == 1 and last.leaking and last.scale == scale
    assert last.slope == pytest.approx(rate, rel=0.3)


def test_steady_noise_is_never_a_leak():
    _, alarms, last, _ = replay(lambda t: 0.0, 6 * HOUR)
    assert alarms == 0 and last.verdict == "steady"


def test_a_daily_cycle_is_not_a_leak():
    first, alarms, _, _ = replay(lambda t: 300 * MiB * math.cos(2 * math.pi * t / DAY), DAY, step=10.0)
    assert alarms == 0, first


@pytest.mark.parametrize(("period", "seed"), [(60.0, 7), (300.0, 7), (300.0, 8), (900.0, 7), (HOUR, 7)])
def test_a_sawtooth_watched_from_its_top_is_never_a_leak(period, seed):
    # Its first rise after the first drop only returns to the top it fell from.
    first, alarms, last, _ = replay(teeth(period, 300 * MiB), 2 * HOUR, seed=seed)
    assert alarms == 0, first
    assert last.verdict == "sawtooth"


def test_a_warm_up_is_never_a_leak():
    # +1 GiB with a 5-min time constant: 3.6 MB/s at first, faster than a 1 MB/s leak, but slowing.
    first, alarms, last, _ = replay(lambda t: -GiB * math.exp(-t / 300), HOUR)
    assert alarms == 0, first
    assert not last.leaking


def test_troughs_that_climb_under_a_sawtooth_are_a_leak_at_a_scale_longer_than_its_period():
    saw = teeth(60.0, 100 * MiB)
    _, alarms, last, _ = replay(lambda t: 60e6 / HOUR * t + saw(t), 2 * HOUR)
    assert last.leaking and last.scale is not None and last.scale > 60.0 * BUCKETS / 2
    assert alarms == 1


@pytest.mark.parametrize(("rate", "seconds"), [(20e6, 360), (1e6, 1800), (60e6 / HOUR, 2 * HOUR),
                                               (10e6 / HOUR, 2 * HOUR)])
def test_a_leak_under_a_sawtooth_is_one_alarm_not_one_per_tooth(rate, seconds):
    # Each drop undoes the leak at its scale; it is seen again only at a later tooth's new high.
    first, alarms, last, _ = replay(lambda t: rate * t + teeth(300.0, 300 * MiB)(t), seconds)
    assert first is not None and last.leaking
    assert alarms == 1


def reading(growth: float, threshold: float = 10 * MiB, scale: float = 600.0, undone: bool = False) -> ScaleReading:
    return ScaleReading(scale, growth / scale, growth, threshold / 5.5, threshold, undone, True, BUCKETS)


def test_a_leak_undone_by_a_drop_or_fading_holds_for_its_hold_while_one_whose_growth_is_gone_is_released_at_once():
    settings = LeakSettings.of(DAY, 0.0)
    called = decide([reading(12 * MiB, scale=60.0)], None, settings, 100, 600.0, GiB, now=1000.0)
    assert called.leaking and called.seen_at == 1000.0
    dropped = reading(-100 * MiB, scale=60.0, undone=True)
    held = decide([dropped], called, settings, 130, 660.0, GiB, now=1000.0 + UNDONE_HOLD * 60 - 1)
    assert held.leaking and held.seen_at == 1000.0 and held.samples == 130
    assert not decide([dropped], held, settings, 131, 661.0, GiB, now=1000.0 + UNDONE_HOLD * 60).leaking
    fading = decide([reading(1 * MiB, scale=60.0)], called, settings, 101, 602.0, GiB, now=1002.0)
    assert fading.leaking and fading.seen_at == 1000.0  # still climbing at a leak's rate, no longer clearly
    assert not decide([reading(-1 * MiB, scale=60.0)], called, settings, 101, 602.0, GiB, now=1002.0).leaking
    day = decide([reading(12 * MiB, scale=DAY)], None, settings, 100, DAY, GiB, now=0.0)
    assert not decide([reading(-GiB, scale=DAY, undone=True)], day, settings, 101, DAY, GiB,
                      now=UNDONE_HOLD_MAX).leaking, "a day-scale leak undone is held at most UNDONE_HOLD_MAX"


def test_hysteresis_holds_a_leak_between_the_release_and_the_call():
    settings = LeakSettings.of(DAY, 0.0)
    fresh = decide([reading(7 * MiB)], None, settings, 100, 600.0, GiB)
    assert not fresh.leaking  # 7 MiB is under the 10 MiB a new leak needs
    called = decide([reading(12 * MiB)], fresh, settings, 100, 600.0, GiB)
    assert called.leaking and called.scale == 600.0
    held = decide([reading(7 * MiB)], called, settings, 100, 600.0, GiB)
    assert held.leaking and held.scale == 600.0  # above half the significance: still the same leak
    released = decide([reading(4 * MiB)], held, settings, 100, 600.0, GiB)
    assert not released.leaking


def test_a_leak_near_the_threshold_does_not_flap():
    _, alarms, last, _ = replay(lambda t: 60e6 / HOUR * t, 3 * HOUR, seed=3)
    assert alarms == 1 and last.leaking


def test_the_pure_entry_gives_the_incremental_verdict():
    samples = [Sample(i * 2.0, int(GiB + 1e6 * i * 2.0)) for i in range(60)]
    history = LeakHistory(SETTINGS)
    for s in samples:
        history.add(s)
    assert judge(samples, SETTINGS) == verdict_of(history)
    assert judge([], SETTINGS).verdict == "warming"


def test_a_day_of_samples_is_kept_in_bounded_memory():
    *_, history = replay(lambda t: 0.0, DAY, step=10.0)
    for s in history.scales:
        assert len(s.buckets) <= BUCKETS + 1 and len(s.past) <= PAST_POINTS + 1


def test_the_scales_stop_at_the_leak_window():
    assert LeakSettings.of(15.0, 1.0).scales == (10.0, 15.0)
    assert LeakSettings.of(DAY, 1.0).scales == (10.0, 60.0, 600.0, HOUR, 6 * HOUR, DAY)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.5, 30.0), st.integers(-8 * MiB, 8 * MiB)), min_size=1, max_size=300),
       cut=st.integers(0, 300), window=st.sampled_from([15.0, 120.0, 900.0]))
def test_a_history_rebuilt_from_its_state_judges_every_later_sample_as_the_original(steps, cut, window):
    """Round trip: history → state → history is exact, at any point of any series (the daemon's restart)."""
    leak_settings = LeakSettings.of(window, 1024.0)
    original, t, ws, previous = LeakHistory(leak_settings), 0.0, GiB, None
    cut = min(cut, len(steps))
    rebuilt = None
    for i, (dt, dv) in enumerate(steps):
        if i == cut:
            state = original.state()
            rebuilt = LeakHistory.from_state(state)
            assert rebuilt.state() == state
        t, ws = t + dt, max(0, ws + dv)
        original.add(Sample(t, ws))
        v = verdict_of(original, previous)
        if rebuilt is not None:
            rebuilt.add(Sample(t, ws))
            assert verdict_of(rebuilt, previous) == v
        previous = v
    if rebuilt is not None:
        assert rebuilt.state() == original.state()


def test_a_state_whose_scales_do_not_match_its_settings_is_refused():
    state = LeakHistory(LeakSettings.of(600.0, 1.0)).state()
    with pytest.raises(ValueError, match="do not match"):
        LeakHistory.from_state(dataclasses.replace(state, settings=LeakSettings.of(DAY, 1.0)))


def test_growth_too_slow_to_be_a_leak_is_no_rhythm_either():
    settings = LeakSettings.of(DAY, MiB / 60)  # 1 MiB/min
    blip = ScaleReading(60.0, 1024.0, 60 * 1024.0, 100.0, 1000.0, True, True, BUCKETS)  # 60 KiB undone, 1 KiB/s
    assert decide([blip], None, settings, 100, 600.0, GiB).verdict == "steady"
    saw = dataclasses.replace(blip, slope=MiB / 30, growth=2 * MiB)
    assert decide([saw], None, settings, 100, 600.0, GiB).verdict == "sawtooth"


def test_a_cycle_whose_first_tooth_is_written_at_once_is_never_a_leak():
    # A small container's 2-min cycle, stepping 1 MB a second, watched from its first sample: filled at once,
    # freed 2 s in, then rising for 110 s and freed again. Its first fall must count as a drop although the
    # fill is all the jitter seen so far.
    def ws(t: float) -> int:
        if t < 2.0:
            return int(0.4e6 + 110e6 * min(t, 1.0))
        t2 = (t - 2.0) % 120.0
        return int(0.4e6 + (0 if t2 < 10 else 1e6 * int(t2 - 9)) + (int(t * 7) % 3) * 4096)

    history, previous, alarms = LeakHistory(LeakSettings.of(600.0, MiB / HOUR)), None, 0
    for i in range(2400):
        history.add(Sample(i * 0.5, ws(i * 0.5)))
        v = verdict_of(history, previous)
        alarms += v.leaking and not (previous is not None and previous.leaking)
        previous = v
    assert alarms == 0
