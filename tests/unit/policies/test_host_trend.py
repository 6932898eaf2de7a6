import dataclasses
import random
from collections.abc import Callable

from memwarden.config.schema import HostConfig
from memwarden.policies import host_trend
from memwarden.policies.host_trend import HostTrend
from memwarden.snapshots import HostSnapshot

MiB, GiB = 1024**2, 1024**3
HOUR = 3600.0
TOTAL = 32 * GiB
CFG = HostConfig(trend_horizon=6 * HOUR)
STEP = 10.0  # seconds between samples


def replay(used: Callable[[float], float], hours: float, cfg: HostConfig = CFG, noise: float = 16 * MiB,
           seed: int = 3) -> list[tuple[float, HostSnapshot, HostTrend]]:
    """The trend after each sample of a used-RAM series (bytes at t seconds) with seeded Gaussian noise."""
    rng = random.Random(seed)
    history = host_trend.new_history()
    trend: HostTrend | None = None
    out = []
    t = 0.0
    while t <= hours * HOUR:
        value = int(used(t) + rng.gauss(0, noise))
        snap = HostSnapshot(1e9 + t, TOTAL, TOTAL - value, 0, 0, None)
        host_trend.observe(history, snap, t)
        trend = host_trend.forecast(history, trend, snap, cfg)
        out.append((t, snap, trend))
        t += STEP
    return out


def warned(seen: list[tuple[float, HostSnapshot, HostTrend]]) -> list[float]:
    return [t for t, _, trend in seen if trend.warned]


def test_used_ram_growing_toward_exhaustion_warns_hours_ahead_with_its_forecast():
    # 24 GiB used and 1 GiB more an hour: the 8 GiB available are gone in 8 h, RAM's 85 % level in 3.2 h.
    seen = replay(lambda t: 24 * GiB + GiB * t / HOUR, 4)
    first = warned(seen)[0]
    _, snap, trend = next(s for s in seen if s[0] == first)
    truth = snap.mem_available / (GiB / HOUR)
    assert trend.exhausted_in is not None and 0.75 * truth <= trend.exhausted_in <= 1.25 * truth
    assert trend.exhausted_in <= CFG.trend_horizon
    assert 100 * (1 - snap.mem_available / TOTAL) < 85, "warned only once the RAM level had tripped"
    assert trend.condition is not None and trend.condition.kind == "host.ram_trend"
    assert trend.condition.severity == "warning" and "would be used up in about" in trend.condition.message
    assert trend.condition.fields["scale_s"] >= host_trend.MIN_SCALE
    assert all(s[2].warned for s in seen if s[0] >= first), "the warning flapped while the trend went on"


def test_steady_noisy_used_ram_never_warns():
    seen = replay(lambda t: 20 * GiB, 8, noise=64 * MiB)
    assert warned(seen) == []
    assert all(trend.exhausted_in is None for _, _, trend in seen)


def test_a_step_then_nothing_more_is_no_trend():
    # A model loaded into RAM: +6 GiB within a minute at the second hour, then flat.
    seen = replay(lambda t: 20 * GiB + (6 * GiB * min(1.0, max(0.0, (t - HOUR) / 60)) if t > HOUR else 0), 8)
    assert warned(seen) == []


def test_slow_growth_far_from_exhaustion_is_forecast_without_a_warning():
    # 100 MiB/h with 20 GiB available: 200 h away, far beyond the horizon.
    seen = replay(lambda t: 12 * GiB + 100 * MiB * t / HOUR, 4, noise=4 * MiB)
    assert warned(seen) == []
    forecasts = [trend.exhausted_in for _, _, trend in seen if trend.exhausted_in is not None]
    assert forecasts, "the trend was never seen"
    assert min(forecasts) > 100 * HOUR
    assert host_trend.view(seen[-1][2])["verdict"] == "leak"


def test_a_zero_horizon_turns_the_warning_off():
    seen = replay(lambda t: 24 * GiB + GiB * t / HOUR, 4, cfg=HostConfig(trend_horizon=0.0))
    assert warned(seen) == []
    assert any(trend.exhausted_in is not None for _, _, trend in seen)


def test_a_raised_warning_holds_until_its_forecast_is_twice_the_horizon_away():
    seen = replay(lambda t: 24 * GiB + GiB * t / HOUR, 4)
    _, snap, trend = seen[-1]
    assert trend.warned and trend.exhausted_in is not None
    history = host_trend.new_history()
    for _, s, _ in seen:
        host_trend.observe(history, s, s.taken_at - 1e9)
    beyond = HostConfig(trend_horizon=trend.exhausted_in / 1.5)  # the forecast now 1.5 horizons away
    held = host_trend.forecast(history, trend, snap, beyond)
    assert held.warned, "a warning raised is dropped inside twice its horizon"
    assert not host_trend.forecast(history, dataclasses.replace(trend, warned=False), snap, beyond).warned


def test_the_view_before_any_sample_is_warming():
    assert host_trend.view(None) == {"verdict": "warming", "scale": None, "slope": 0.0, "exhausted_in": None,
                                     "warned": False}
