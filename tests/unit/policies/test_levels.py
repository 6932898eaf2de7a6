import dataclasses

import pytest

from memwarden.policies.levels import Level, Thresholds, Track, step, target_level

T = Thresholds(warn=85.0, crit=95.0, hysteresis=5.0, hold=10.0)


def run(values, t=T, track=None, start=0.0, dt=1.0):
    """Feed (value) samples every `dt` seconds; return the track after each sample."""
    track = track or Track()
    out = []
    for i, value in enumerate(values):
        track = step(track, value, t, start + i * dt)
        out.append(track)
    return out


def levels(tracks):
    return [tr.level for tr in tracks]


# ---- target_level ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "current", "expected"),
    [
        (0, Level.OK, Level.OK),
        (84.9, Level.OK, Level.OK),
        (85, Level.OK, Level.WARNING),
        (94.9, Level.OK, Level.WARNING),
        (95, Level.OK, Level.CRITICAL),
        (100, Level.OK, Level.CRITICAL),
        # hysteresis keeps a held level until value < threshold - hysteresis
        (80, Level.WARNING, Level.WARNING),
        (79.9, Level.WARNING, Level.OK),
        (90, Level.CRITICAL, Level.CRITICAL),
        (89.9, Level.CRITICAL, Level.WARNING),
        (80, Level.CRITICAL, Level.WARNING),  # critical falls through to the warning band
        (79.9, Level.CRITICAL, Level.OK),
        # hysteresis never raises a level
        (90, Level.WARNING, Level.WARNING),
        (82, Level.OK, Level.OK),
    ],
)
def test_target_level(value, current, expected):
    assert target_level(value, current, T) == expected


def test_target_level_zero_hysteresis():
    t = dataclasses.replace(T, hysteresis=0.0)
    assert target_level(84.99, Level.WARNING, t) == Level.OK
    assert target_level(85, Level.WARNING, t) == Level.WARNING


def test_level_labels_and_order():
    assert [lv.label for lv in Level] == ["ok", "warning", "critical"]
    assert Level.OK < Level.WARNING < Level.CRITICAL


# ---- step ------------------------------------------------------------------------------------------------


def test_value_at_current_level_keeps_it_and_clears_run():
    track = step(Track(Level.WARNING, 3.0, Level.OK), 88.0, T, 5.0)
    assert track == Track(Level.WARNING)


def test_spike_shorter_than_hold_does_not_raise():
    # 9 s above warn, then back down: never adopted.
    tracks = run([90] * 10 + [50] + [90] * 10)
    assert all(lv is Level.OK for lv in levels(tracks))
    # The dip reset the run: the second run started at t=11.
    assert tracks[-1].run_since == 11.0


def test_sustained_value_raises_exactly_after_hold():
    tracks = run([90] * 12)
    assert levels(tracks)[:10] == [Level.OK] * 10
    assert tracks[9].run_since == 0.0
    assert tracks[9].run_bound is Level.WARNING
    assert tracks[10] == Track(Level.WARNING)  # t=10: held for 10 s
    assert tracks[11] == Track(Level.WARNING)


def test_run_records_start_and_bound():
    track = step(Track(), 96.0, T, 100.0)
    assert track == Track(Level.OK, 100.0, Level.CRITICAL)


def test_sustained_critical_from_ok_goes_straight_to_critical():
    tracks = run([97] * 11)
    assert tracks[10].level is Level.CRITICAL


def test_oscillation_within_hysteresis_does_not_flap():
    held = run([90] * 11)[-1]
    assert held.level is Level.WARNING
    # Wobble around the warn threshold, never below 80 = 85 - 5.
    tracks = run([84, 86, 81, 88, 80.5, 85, 84.9] * 5, track=held, start=11.0)
    assert all(lv is Level.WARNING for lv in levels(tracks))
    assert all(tr.run_since is None for tr in tracks)


def test_oscillation_around_threshold_from_below_does_not_raise():
    tracks = run([84, 86] * 20)
    assert all(lv is Level.OK for lv in levels(tracks))


def test_falling_requires_hold_too():
    track = Track(Level.WARNING)
    tracks = run([50] * 11, track=track, start=100.0)
    assert levels(tracks)[:10] == [Level.WARNING] * 10
    assert tracks[0] == Track(Level.WARNING, 100.0, Level.OK)
    assert tracks[10] == Track(Level.OK)


def test_short_dip_does_not_clear():
    track = Track(Level.CRITICAL)
    tracks = run([50] * 5 + [97] + [50] * 9, track=track)
    assert all(lv is Level.CRITICAL for lv in levels(tracks))
    assert tracks[-1].run_since == 6.0


def test_rising_run_oscillating_between_warn_and_crit_adopts_warn():
    tracks = run([96, 88] * 6)  # t=0..11
    assert tracks[9].level is Level.OK
    assert tracks[10] == Track(Level.WARNING)  # t=10, value 96: only as far as every sample agreed
    # A fresh run towards critical starts after adoption.
    after = step(tracks[-1], 96.0, T, 12.0)
    assert after == Track(Level.WARNING, 12.0, Level.CRITICAL)


def test_falling_run_from_critical_adopts_highest_seen():
    tracks = run([50, 83] * 6, track=Track(Level.CRITICAL))
    assert tracks[9].level is Level.CRITICAL
    assert tracks[10].level is Level.WARNING


def test_direction_change_starts_a_new_run():
    # Held WARNING; a rising run towards CRITICAL, then a fall towards OK must not inherit its start.
    track = Track(Level.WARNING)
    track = step(track, 97.0, T, 0.0)
    assert track == Track(Level.WARNING, 0.0, Level.CRITICAL)
    track = step(track, 50.0, T, 9.0)
    assert track == Track(Level.WARNING, 9.0, Level.OK)
    track = step(track, 50.0, T, 18.0)
    assert track.level is Level.WARNING
    track = step(track, 50.0, T, 19.0)
    assert track == Track(Level.OK)


def test_hold_zero_switches_immediately():
    t = dataclasses.replace(T, hold=0.0)
    assert step(Track(), 90.0, t, 5.0) == Track(Level.WARNING)
    assert step(Track(), 99.0, t, 5.0) == Track(Level.CRITICAL)
    assert step(Track(Level.CRITICAL), 10.0, t, 5.0) == Track(Level.OK)
    assert step(Track(Level.CRITICAL), 85.0, t, 5.0) == Track(Level.WARNING)


def test_track_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Track().level = Level.CRITICAL  # type: ignore[misc]
