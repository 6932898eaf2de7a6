"""Wall-clock steps (NTP, `date -s`, a restored VM) forward and back by hours and days.

What is timed (holds, hysteresis, sample passes, housekeeping, renotify intervals, the proxy's idle gate) runs on
the monotonic clock and does not notice; what is shown and kept (alert times, restarts, runs) carries wall-clock
times and follows the step without a burst, a stall, or a negative figure. The first part injects the clocks into
the real classes; the last runs the real daemon under libfaketime, which steps CLOCK_REALTIME only.
"""

from __future__ import annotations

import asyncio
import glob
import os
import time
from types import MappingProxyType

import pytest

from memwarden.alerts.dispatch import AlertDispatcher
from memwarden.alerts.history import AlertHistory
from memwarden.alerts.model import Condition
from memwarden.arbiter.arbiter import GpuArbiter
from memwarden.config import parse_config
from memwarden.containers.watch import ContainerWatch
from memwarden.learning import trigger
from memwarden.probes.gpu import NoGpuProbe
from memwarden.probes.runner import ProbeRunner
from memwarden.sample_pass import SamplePass
from memwarden.services import build
from memwarden.snapshots import ContainerMemory, ContainersSnapshot, HostSnapshot
from memwarden.state.db import open_state
from support.daemon import DaemonProcess
from support.ollama_double.manager import wait_until

DAY = 86400.0
HOUR = 3600.0
MiB = 1 << 20
GiB = 1 << 30
T0 = 1_800_000_000.0  # a wall-clock time (2027)


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(tmp_path, **sections):
    env = {"STATE_DIRECTORY": str(tmp_path / "state"), "RUNTIME_DIRECTORY": str(tmp_path / "run")}
    base = {"gpu": {"backend": "none"}, "ollama": {"url": ""}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return parse_config(base, env=env, uid=1000)


def condition(kind="host.ram") -> Condition:
    return Condition(kind, "host", "warning", "RAM high", MappingProxyType({}))


# ---- alert renotify -----------------------------------------------------------------------------------------


@pytest.fixture
def dispatcher(tmp_path):
    db = open_state(tmp_path / "state")
    mono, wall = Clock(1000.0), Clock(T0)
    cfg = config(tmp_path, alerts={"renotify_interval": "1h"}).alerts
    d = AlertDispatcher(AlertHistory(db), cfg, mono=mono)
    yield d, mono, wall
    db.close()


def tick(d, mono, wall, dt, step=0.0, conditions=None):
    mono.t += dt
    wall.t += dt + step
    return [e.type.value for e in d.update("host", [condition()] if conditions is None else conditions, wall.t)]


def test_a_forward_step_renotifies_nothing_before_the_interval_has_really_passed(dispatcher):
    d, mono, wall = dispatcher
    assert tick(d, mono, wall, 0) == ["raised"]
    assert tick(d, mono, wall, 2, step=2 * DAY) == []  # the old code renotified every alert here, at once
    for _ in range(10):
        assert tick(d, mono, wall, 2) == []
    assert tick(d, mono, wall, HOUR) == ["renotified"]  # a real hour later
    (alert,) = d.active.values()
    assert alert.raised_at == T0  # what is shown keeps its wall time


def test_a_backward_step_does_not_silence_an_alert_for_as_long_as_the_step(dispatcher):
    d, mono, wall = dispatcher
    assert tick(d, mono, wall, 0) == ["raised"]
    assert tick(d, mono, wall, 2, step=-DAY) == []
    assert tick(d, mono, wall, HOUR - 10) == []
    assert tick(d, mono, wall, 20) == ["renotified"]  # the old code waited a day and an hour
    assert tick(d, mono, wall, 2, conditions=[]) == ["resolved"]


# ---- the host policy's hold, inside the daemon -----------------------------------------------------------------


def assembled(tmp_path, mono, wall, **sections) -> SamplePass:
    """The daemon's parts as services.build() makes them, and the sample pass over them (no socket, no loop)."""
    cfg = config(tmp_path, **sections)
    return SamplePass(build(cfg, open_state(cfg.daemon.state_dir), env={}, clock=mono, wall=wall,
                            gpu_probe=NoGpuProbe()))


def host(used_percent: float) -> HostSnapshot:
    total = 16 * 1024 * MiB
    return HostSnapshot(T0, total, int(total * (1 - used_percent / 100)), 0, 0, None)


def test_the_hold_counts_monotonic_seconds_whatever_the_wall_clock_does(tmp_path):
    mono, wall = Clock(1000.0), Clock(T0)
    d = assembled(tmp_path, mono, wall, host={"hold": "10s", "ram_warn_percent": 80, "ram_crit_percent": 95})
    try:
        def at(dt: float, step: float, used: float) -> str:
            mono.t += dt
            wall.t += dt + step
            d.act_on_host(host(used))
            return d.s.readings.host_state.tracks["ram"].level.label

        assert at(0, 0, 90) == "ok"
        assert at(2, DAY, 90) == "ok"  # a day "passed" on the wall: no hold is over
        assert at(2, -2 * DAY, 90) == "ok"
        assert at(7, 0, 90) == "warning"  # 11 real seconds
        assert [a["kind"] for a in d.s.dispatcher.active_list()] == ["host.ram"]
        assert at(2, -DAY, 70) == "warning"  # clearing needs its own hold too
        assert at(11, 0, 70) == "ok"
    finally:
        d.s.db.close()


# ---- housekeeping ------------------------------------------------------------------------------------------------


def test_housekeeping_prunes_by_the_clock_it_finds_no_more_and_no_less(tmp_path):
    mono, wall = Clock(1000.0), Clock(T0)
    d = assembled(tmp_path, mono, wall, alerts={"history_retention": "30d"})
    try:
        table = d.s.db["alert_history"]
        for age_days in (40, 29, 10, 1):
            table.insert({"kind": "host.ram", "key": f"{age_days}d", "severity": "warning", "message": "m",
                          "raised_at": T0 - age_days * DAY - 60, "resolved_at": T0 - age_days * DAY})

        async def keys():
            await d.housekeeping()
            return sorted(r["key"] for r in table.rows)

        wall.t = T0 - 365 * DAY  # stepped back a year: nothing looks old
        assert asyncio.run(keys()) == ["10d", "1d", "29d", "40d"]
        wall.t = T0  # back to the truth: only what is past retention goes
        assert asyncio.run(keys()) == ["10d", "1d", "29d"]
        wall.t = T0 + 2 * DAY  # two days on: the 29-day-old one passes 30 days, the others stay
        assert asyncio.run(keys()) == ["10d", "1d"]
    finally:
        d.s.db.close()


# ---- containers: a leak series across a step ---------------------------------------------------------------------


def test_a_backward_step_restarts_a_leak_series_instead_of_fitting_across_it(tmp_path):
    cfg = config(tmp_path, containers={"enabled": True, "leak_window": "20s", "leak_min_rate": "100KiB/s",
                                       "action": "alert"})
    db = open_state(cfg.daemon.state_dir)
    wall = Clock(T0)
    watch = ContainerWatch(cfg, db, lambda cid, timeout: None, clock=wall)

    def box(ws: int) -> ContainerMemory:
        return ContainerMemory(id="c" * 64, name="web", image="app:1", working_set=ws, usage=ws, limit=0, rss=ws,
                               restart_count=0, compose_service="svc", labels=(), started_at="", source="cgroup")

    async def run() -> list[str]:
        verdicts = []
        ws = 200 * MiB
        for i in range(60):
            wall.t += 1.0
            if i == 30:
                wall.t -= HOUR  # stepped back an hour, mid-series
            await watch.act(ContainersSnapshot(wall.t, (box(ws),), 2), None)
            verdicts.append(watch.series["web"].verdict.verdict)
        return verdicts

    try:
        verdicts = asyncio.run(run())
    finally:
        db.close()
    assert "leak" not in verdicts  # a flat working set: nothing leaks, before or after the step
    assert verdicts[30] == "warming" and verdicts[-1] == "steady"  # it started over and warmed up again
    history = watch.series["web"].history
    assert history.count == 30 and history.first == history.last.t - 29  # only the samples from the step on


# ---- learning: min_interval across steps --------------------------------------------------------------------------


def test_learning_min_interval_a_step_back_delays_a_step_forward_frees_once():
    def due(last_run_at: float, now: float) -> trigger.Decision:
        return trigger.decide("a", 200, last_run_at, False, 150, 6 * HOUR, now)

    back = due(T0, T0 - DAY)  # the last run "starts in the future"
    assert not back.due and back.reason == trigger.MIN_INTERVAL
    assert "1d in the future (the clock was set back)" in back.message, back.message
    forward = due(T0, T0 + 2 * DAY)
    assert forward.due
    # A run that starts now is the new last run: the next one waits min_interval again, not zero.
    assert not due(T0 + 2 * DAY, T0 + 2 * DAY + 60).due


# ---- leases: the proxy's idle gate ----------------------------------------------------------------------------------


def test_the_idle_gate_for_preemptible_leases_is_monotonic(tmp_path):
    cfg = config(tmp_path)
    db = open_state(cfg.daemon.state_dir)
    wall = Clock(T0)
    arbiter = GpuArbiter(cfg, db, ProbeRunner(NoGpuProbe(), 5.0), None, clock=wall)
    try:
        arbiter.serving_busy_until = time.monotonic() - 1  # serving has been idle long enough
        wall.t -= DAY  # ... and then the wall clock stepped back a day
        refusal = asyncio.run(arbiter.try_grant(GiB, "trainer", None, None, None, 0, True))
        assert "serving has priority" not in refusal.reason and "no GPU" in refusal.reason
        arbiter.serving_busy_until = time.monotonic() + 60
        wall.t += 2 * DAY
        refusal = asyncio.run(arbiter.try_grant(GiB, "trainer", None, None, None, 0, True))
        assert "serving has priority" in refusal.reason and "another 60s" in refusal.reason
    finally:
        db.close()


# ---- the real daemon, its wall clock stepped by libfaketime ----------------------------------------------------------

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
                               + glob.glob("/usr/lib/faketime/libfaketime.so.1"))), None)


@pytest.fixture
def stepped(make_daemon, tmp_path):
    if LIBFAKETIME is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime): it steps the daemon's wall clock")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "DONT_FAKE_MONOTONIC": "1"}
    # RAM used is above 1 %: a critical host.ram alert from the first pass on, to watch its renotifications.
    d = make_daemon(env=env, config={"host": {"ram_warn_percent": 1, "ram_crit_percent": 2, "hold": "0s"},
                                     "alerts": {"renotify_interval": "1h"}})
    d.start()

    def step(to: str) -> None:
        offset.write_text(f"{to}\n")

    return d, step


def passes(d: DaemonProcess) -> int:
    return d.call("status")["last_sample"]["count"]


def ram_alert(d: DaemonProcess) -> dict:
    return next(a for a in d.call("alerts", {"limit": 1})["active"] if a["kind"] == "host.ram")


def test_the_real_daemon_keeps_its_pace_and_its_alerts_across_steps(stepped):
    d, step = stepped
    wait_until(lambda: passes(d) >= 3, timeout=10)
    assert ram_alert(d)["notify_count"] == 1
    for offset, seconds in (("-1d", -DAY), ("+2d", 2 * DAY), ("-3d", -3 * DAY)):
        step(offset)
        before, started = passes(d), time.monotonic()
        # Passes go on at their 200 ms interval: no stall (the old scheduler ran none for a day after "-1d")...
        wait_until(lambda b=before: passes(d) >= b + 5, timeout=10, message=f"5 more passes after {offset}")
        elapsed = time.monotonic() - started
        # ... and no burst to catch up the time the wall clock skipped.
        assert passes(d) - before <= elapsed / 0.2 + 3
        status = d.call("status")
        assert status["uptime_s"] >= 0 and status["ready"] is True
        assert abs(status["last_sample"]["at"] - (time.time() + seconds)) < 5  # the daemon's clock did step
        # The alert is neither renotified by a step forward nor (below) silenced by a step back.
        assert ram_alert(d)["notify_count"] == 1, offset
    # Stepped back three days from +2d: with a 1 s renotify interval it must renotify within seconds.
    d.sections["alerts"]["renotify_interval"] = "1s"
    d.write_config(d.sections)
    assert d.call("config.reload")["reloaded"] is True
    wait_until(lambda: ram_alert(d)["notify_count"] >= 2, timeout=10, message="a renotification")
    assert d.proc.poll() is None and os.path.exists(d.socket_path)
