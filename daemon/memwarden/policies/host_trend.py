"""Host RAM trending to exhaustion: the host's used RAM judged at every leak scale, warned with its forecast.

The used RAM (MemTotal − MemAvailable) is a series like a container's working set, so it is judged the same way
(policies/leak_scales.py): a trend is growth that stands clear of the series' own noise at some scale and has not
been undone. Its forecast is MemAvailable ÷ the slope at that scale. A `host.ram_trend` warning is raised when
the forecast falls within `host.trend_horizon`, so it comes hours before the RAM levels trip. Only a trend seen
at MIN_SCALE or longer forecasts, never further than REACH times its scale: a minute of growth says nothing
about tomorrow, and growth fast enough to exhaust RAM within minutes trips the RAM levels themselves. A trend
must still be rising over the last third of its scale: a step (a model loaded into RAM, then nothing more) bends a
robust line for a while but is no trend once it has happened. Once raised, the warning holds until the trend is
gone or its forecast is twice as far away as it may be, so a forecast wandering around the horizon does not flap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

from memwarden.alerts.model import Condition
from memwarden.config.schema import HostConfig
from memwarden.policies import leak_scales
from memwarden.policies.leak import LeakVerdict, Sample, theil_sen
from memwarden.snapshots import HostSnapshot
from memwarden.units import DAY, format_duration, format_size

REACH = 6.0  # a trend seen at scale S forecasts at most this many S ahead
MIN_SCALE = 600.0  # seconds: the shortest scale whose trend forecasts
RELEASE = 2.0  # a raised warning holds while its forecast stays within this many horizons
MIN_RATE = 1024 * 1024 / 3600  # bytes/s: slower growth than 1 MiB/h is no trend, however steady
SETTINGS = leak_scales.LeakSettings.of(DAY, MIN_RATE)


@dataclass(frozen=True)
class HostTrend:
    verdict: LeakVerdict  # of the used RAM
    exhausted_in: float | None  # seconds until MemAvailable reaches 0 at the trend's slope; None: no trend
    warned: bool  # a host.ram_trend warning is raised
    condition: Condition | None


def new_history() -> leak_scales.LeakHistory:
    return leak_scales.LeakHistory(SETTINGS)


def observe(history: leak_scales.LeakHistory, snap: HostSnapshot, now: float) -> None:
    """Add the snapshot's used RAM to the series, on the monotonic clock `now` (a wall-clock step bends no line)."""
    history.add(Sample(now, snap.mem_total - snap.mem_available))


def forecast(history: leak_scales.LeakHistory, previous: HostTrend | None, snap: HostSnapshot,
             cfg: HostConfig) -> HostTrend:
    """Pure but for reading the history: the trend, its forecast and whether it warns."""
    verdict = leak_scales.verdict_of(history, previous.verdict if previous else None,
                                     host_available=snap.mem_available)
    # The longest scale that sees the trend forecasts furthest: a day's growth says more than ten minutes'.
    seen = [r for r in history.readings() if r.scale >= MIN_SCALE and r.covered and not r.undone
            and r.growth > r.threshold and r.slope >= MIN_RATE
            and recent_slope(history, r.scale) >= max(MIN_RATE, r.slope / 4)]
    trend = seen[-1] if seen else None
    exhausted_in = snap.mem_available / trend.slope if trend is not None else None
    warned = False
    if trend is not None and exhausted_in is not None and cfg.trend_horizon > 0:
        was = previous is not None and previous.warned
        warned = exhausted_in <= min(cfg.trend_horizon, REACH * trend.scale) * (RELEASE if was else 1.0)
    if trend is not None:
        verdict = dataclasses.replace(verdict, verdict="leak", slope=trend.slope, recent_slope=trend.slope,
                                      scale=trend.scale, growth=trend.growth, noise=trend.noise,
                                      exhaustion_in=exhausted_in, exhaustion_of="host")
    condition = None
    if warned:
        assert exhausted_in is not None and verdict.scale is not None
        condition = Condition(
            kind="host.ram_trend", key="host", severity="warning",
            message=(f"RAM use growing {format_size(verdict.slope * 3600)}/h at the "
                     f"{format_duration(verdict.scale)} scale: the {format_size(snap.mem_available)} available "
                     f"would be used up in about {format_duration(exhausted_in)} "
                     f"(host.trend_horizon {format_duration(cfg.trend_horizon)})"),
            fields=MappingProxyType({
                "slope_bps": round(verdict.slope, 1), "scale_s": verdict.scale, "growth": round(verdict.growth),
                "noise": round(verdict.noise), "exhausted_in_s": round(exhausted_in, 1),
                "mem_available": snap.mem_available, "mem_total": snap.mem_total,
                "horizon_s": cfg.trend_horizon}))
    return HostTrend(verdict, exhausted_in, warned, condition)


def recent_slope(history: leak_scales.LeakHistory, scale: float) -> float:
    """Bytes/s of the envelope over the last third of the scale's closed buckets (0 with fewer than three)."""
    for s in history.scales:
        if s.scale == scale:
            closed = list(s.buckets)[:-1]
            recent = [(b[5], b[1]) for b in closed[-(leak_scales.BUCKETS // 3):]]
            return theil_sen(recent) if len(recent) >= 3 else 0.0
    return 0.0


def view(trend: HostTrend | None) -> dict[str, object]:
    """The trend as `host` shows it: the verdict of the used RAM, the scale, the slope and the forecast."""
    if trend is None:
        return {"verdict": "warming", "scale": None, "slope": 0.0, "exhausted_in": None, "warned": False}
    v = trend.verdict
    return {"verdict": v.verdict, "scale": v.scale, "slope": round(v.slope, 1),
            "exhausted_in": None if trend.exhausted_in is None else round(trend.exhausted_in, 1),
            "warned": trend.warned}
