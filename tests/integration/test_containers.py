"""Container memory against a real Docker engine: a private dockerd (tests/support/docker_engine.py) running
containers built from the host's static busybox, watched by the real memwardend.

Every wait polls the daemon's RPCs (or Docker) against a deadline; nothing asserts after a fixed sleep. The
leak window is short (WINDOW) so a whole scenario fits in well under a minute: a verdict needs samples over
80 % of the window, so a steady leak is called about 0.8 × WINDOW after the daemon first sees the container.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import pytest

from support.daemon import BIN
from support.docker_engine import DockerEngine, leaker, requirements, sawtooth, started_at, steady
from support.junk_http import JunkServer

T = TypeVar("T")
MiB = 1024 * 1024
WINDOW = 15.0  # containers.leak_window, seconds
INTERVAL = 0.5  # daemon.sample_interval, seconds
VERIFY_AFTER = 3.0


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    missing = requirements()
    if missing:
        pytest.skip("a private Docker engine needs " + "; ".join(missing))
    e = DockerEngine()
    try:
        e.start()
        e.build_image()
        yield e
    finally:
        e.cleanup()


@pytest.fixture
def docker(engine) -> Iterator[DockerEngine]:
    """The engine, running, with no container left over from an earlier test (and none left after this one)."""
    engine.start()
    engine.remove_all()
    yield engine
    if engine.running:
        engine.remove_all()


def until(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll `fn` until it returns something truthy, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {value!r}")
        time.sleep(interval)


def config(engine: DockerEngine, daemon: dict[str, Any] | None = None, **containers: Any) -> dict[str, Any]:
    return {"daemon": {"sample_interval": f"{int(INTERVAL * 1000)}ms", **(daemon or {})},
            "containers": {"enabled": True, "docker_url": engine.url, "leak_window": f"{WINDOW:g}s",
                           "leak_min_rate": "256KiB/s", "verify_after": f"{VERIFY_AFTER:g}s",
                           "restart_cooldown": "0s", "max_restarts_per_hour": 1, "stop_timeout": "1s",
                           **containers}}


def rows(d) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in d.call("containers.list")["containers"]}


def alerts(d, kind: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
    """Every alert raised so far (active ones included), newest first."""
    return [a for a in d.call("alerts", {"limit": 1000})["recent"]
            if (kind is None or a["kind"] == kind) and (key is None or a["key"] == key)]


def restarts(d, container: str) -> list[dict[str, Any]]:
    return [r for r in d.call("containers.history", {"limit": 1000}) if r["container"] == container]


def verdicts_logged(d, container: str) -> list[str]:
    """The verdict changes the daemon logged for a container, in order."""
    return [e["verdict"] for e in d.log_events()
            if e.get("decision") == "container.verdict" and e.get("container") == container]


def first_pass_at(d) -> float | None:
    """When the daemon's first sample pass ended (its `ready` line), in epoch seconds."""
    ready = [e for e in d.log_events() if e.get("event") == "ready"]
    return datetime.fromisoformat(ready[0]["timestamp"]).timestamp() if ready else None


def passes(d) -> int:
    return d.call("status")["last_sample"]["count"]


def wait_passes(d, n: int) -> None:
    target = passes(d) + n
    until(lambda: passes(d) >= target, n * INTERVAL * 4 + 5, f"{n} more sample passes")


def ctl(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, *args], capture_output=True,
                          text=True, timeout=60)


def test_leaks_are_found_restarted_verified_and_held_to_the_budget_while_steady_and_sawtooth_are_not(
        docker, make_daemon):
    docker.run("leaker", leaker(2), labels={"memwarden.action": "restart"})
    docker.run("ignored", leaker(2), labels={"memwarden.action": "ignore"})
    docker.run("limited", leaker(2), mem_limit="256m")
    docker.run("steady", steady())
    docker.run("sawtooth", sawtooth())
    before = {name: started_at(docker, name) for name in ("leaker", "ignored", "limited")}
    d = make_daemon(config=config(docker, action="alert")).start()
    # The detector's clock starts at the daemon's first sample pass, which a loaded machine delays past its start.
    t0 = until(lambda: first_pass_at(d), 30, "the first sample pass")

    # Every container is seen on the first pass, with its limit (0: none) and no spurious probe alert at start.
    seen = until(lambda: (r := rows(d)) and len(r) == 5 and r, 10, "the five containers")
    assert seen["steady"]["limit"] == 0 and seen["steady"]["no_limit"]
    assert seen["limited"]["limit"] == 256 * MiB
    assert all(r["source"] == "cgroup" for r in seen.values())
    table = ctl(d, "containers")
    assert table.returncode == 0, table.stderr
    line = {ln.split()[0]: ln for ln in table.stdout.splitlines()[2:]}
    assert "none" in line["steady"].split() and "256.0 MiB" in line["limited"]
    assert alerts(d, "probe.degraded") == []

    # The leak is called within the window, alerted, and (label memwarden.action=restart) the container restarted.
    first = until(lambda: alerts(d, "container.leak", "leaker"), WINDOW + 10, "a container.leak alert for leaker")
    assert first[-1]["raised_at"] - t0 <= WINDOW + 2 * INTERVAL, "leak called later than one window"
    assert "leak" in verdicts_logged(d, "leaker")
    row = until(lambda: restarts(d, "leaker"), 15, "leaker's restart row")[0]
    assert row["reason"] == "leak" and row["dry_run"] == 0 and row["error"] is None
    assert row["working_set_before"] >= 0.8 * WINDOW * 2 * MiB * 0.8
    until(lambda: started_at(docker, "leaker") != before["leaker"], 15, "leaker restarted by Docker")
    restarted_at = started_at(docker, "leaker")
    verified = until(lambda: (r := restarts(d, "leaker")) and r[0]["effective"] is not None and r[0],
                     VERIFY_AFTER + 10, "the restart verified")
    assert verified["effective"] == 1, verified
    assert verified["working_set_after"] <= verified["working_set_before"] / 2

    # The same leak again: the budget (1 an hour) is spent, so it is alerted, saying so, and not restarted.
    budget = until(lambda: [a for a in alerts(d, "container.leak", "leaker") if "budget spent" in a["message"]],
                   WINDOW + 15, "an alert saying leaker's restart budget is spent")
    assert budget[0]["resolved_at"] is None and "1 of 1 in the last hour" in budget[0]["message"]
    assert len(alerts(d, "container.leak", "leaker")) == 2, "the first episode's alert was resolved by the restart"
    wait_passes(d, 6)
    assert len(restarts(d, "leaker")) == 1, "a second restart despite the spent budget"
    assert started_at(docker, "leaker") == restarted_at
    assert any(e.get("decision") == "container.withheld" and e.get("container") == "leaker"
               for e in d.log_events())

    # A container with a limit is projected against it.
    limited = until(lambda: {r["name"]: r for r in d.call("containers.leaks")}.get("limited"), 10, "limited in leaks")
    assert limited["verdict"] == "leak" and limited["exhaustion_of"] == "limit" and limited["limit"] == 256 * MiB
    limited_alert = alerts(d, "container.leak", "limited")[0]
    assert "its limit exhausted" in limited_alert["message"] and limited_alert["severity"] == "critical"
    assert started_at(docker, "limited") == before["limited"], "action alert restarted a container"

    # memwarden.action=ignore: leaking (the view says so), but never alerted nor restarted.
    ignored = rows(d)["ignored"]
    assert ignored["verdict"] == "leak" and ignored["action"] == "ignore"
    assert alerts(d, key="ignored") == []
    assert restarts(d, "ignored") == [] and started_at(docker, "ignored") == before["ignored"]

    # Steady and sawtooth: judged over at least one full window after warming, never a leak.
    until(lambda: time.time() - t0 >= 2 * WINDOW + 1, 2 * WINDOW + 5, "two windows of samples")
    for name, expected in (("steady", "steady"), ("sawtooth", "sawtooth")):
        logged = verdicts_logged(d, name)
        # A sawtooth whose last drop has left the window reads as steady for a while: neither is a leak.
        allowed = {"steady", expected}
        assert logged and set(logged) <= allowed, (name, logged)
        assert rows(d)[name]["verdict"] in allowed
        assert alerts(d, key=name) == []
    assert d.proc.poll() is None


def test_a_daemon_restart_mid_leak_resumes_each_history_and_verdict_without_warming_again(docker, make_daemon):
    docker.run("leaker", leaker(2))
    docker.run("steady", steady())
    d = make_daemon(config=config(docker, action="alert")).start()
    until(lambda: alerts(d, "container.leak", "leaker"), WINDOW + 10, "a container.leak alert for leaker")
    until(lambda: rows(d)["steady"]["verdict"] == "steady", WINDOW + 10, "steady judged steady")
    assert d.stop() == 0
    first_run = len(d.log_events())

    d.start()
    wait_passes(d, 3)
    after = d.log_events()[first_run:]
    resumed = {e["container"]: e["verdict"] for e in after if e.get("event") == "leak history resumed"}
    assert resumed == {"leaker": "leak", "steady": "steady"}
    view = rows(d)
    assert view["leaker"]["verdict"] == "leak" and view["steady"]["verdict"] == "steady"
    # A history started over would be "warming" for most of a window before any verdict.
    assert [e for e in after if e.get("decision") == "container.verdict" and e.get("verdict") == "warming"] == []
    assert alerts(d, "container.leak", "leaker")[0]["resolved_at"] is None


def test_dry_run_logs_the_restart_once_and_leaves_the_container_alone(docker, make_daemon):
    docker.run("dry", leaker(2))
    before = docker.inspect("dry")["State"]["StartedAt"], docker.inspect("dry")["RestartCount"]
    d = make_daemon(config=config(docker, daemon={"dry_run": True}, action="restart")).start()

    row = until(lambda: restarts(d, "dry"), WINDOW + 10, "a dry-run restart row")[0]
    assert row["dry_run"] == 1 and row["reason"] == "leak" and row["effective"] is None
    decision = [e for e in d.log_events() if e.get("decision") == "container.restart"]
    assert decision and decision[0]["container"] == "dry" and decision[0]["dry_run"] is True
    assert decision[0]["slope_bps"] > 256 * 1024 and decision[0]["window_s"] == WINDOW  # logged with its inputs

    # Still leaking a few passes later: counted as if done, so the budget holds it (not one row per pass).
    wait_passes(d, 6)
    assert len(restarts(d, "dry")) == 1
    assert rows(d)["dry"]["verdict"] == "leak"
    active = [a for a in d.call("alerts")["active"] if a["kind"] == "container.leak" and a["key"] == "dry"]
    assert "no restart: restart budget spent" in active[0]["message"]  # the live message; history keeps the first
    after = docker.inspect("dry")
    assert (after["State"]["StartedAt"], after["RestartCount"]) == before
    assert after["State"]["Running"]


def test_a_removed_container_disappears_while_signalled_and_oom_hit_ones_stay_watched(docker, make_daemon):
    docker.run("doomed", steady())
    docker.run("signalled", steady())
    # A child is OOM-killed (200 MB buffer under a 64 MB limit); the shell, PID 1, lives on.
    docker.run("oomhit", "sleep 2; dd if=/dev/zero of=/dev/null bs=200M count=1; while true; do sleep 1; done",
               mem_limit="64m")
    d = make_daemon(config=config(docker)).start()
    until(lambda: {"doomed", "signalled", "oomhit"} <= set(rows(d)), 10, "the three containers")

    docker.client().containers.get("doomed").remove(force=True)
    docker.client().containers.get("signalled").kill(signal="USR1")  # sh as PID 1 ignores it
    until(lambda: docker.inspect("oomhit")["State"]["OOMKilled"] or _oom_event_seen(docker), 15, "the OOM kill")
    until(lambda: "doomed" not in rows(d), 10, "doomed gone from the view")
    wait_passes(d, 4)
    assert {"signalled", "oomhit"} <= set(rows(d)), "a running container dropped from the watch"
    status = d.call("status")
    assert "containers" not in status["degraded"]
    assert d.proc.poll() is None


def _oom_event_seen(engine: DockerEngine) -> bool:
    since = int(time.time()) - 60
    events = engine.client().api.events(since=since, until=int(time.time()) + 1, decode=True,
                                        filters={"type": "container", "event": "oom"})
    return any(e.get("Actor", {}).get("Attributes", {}).get("name") == "oomhit" for e in events)


def test_memwardenctl_containers_restart_restarts_and_records_it(docker, make_daemon):
    docker.run("manual", steady())
    before = started_at(docker, "manual")
    d = make_daemon(config=config(docker)).start()
    until(lambda: "manual" in rows(d), 10, "manual in the view")

    out = ctl(d, "containers", "restart", "manual")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "manual: restarted; verifying"
    assert started_at(docker, "manual") != before
    row = restarts(d, "manual")[0]
    assert row["reason"] == "manual restart" and row["dry_run"] == 0 and row["error"] is None
    assert "manual restart" in ctl(d, "containers", "history").stdout

    missing = ctl(d, "containers", "restart", "no-such-container")
    assert missing.returncode == 1 and "no running container 'no-such-container'" in missing.stderr


def test_dockerd_stopped_mid_run_is_a_degraded_probe_then_recovers(docker, make_daemon):
    docker.run("survivor", steady(), restart_policy="always")
    d = make_daemon(config=config(docker)).start()
    until(lambda: "survivor" in rows(d), 10, "survivor in the view")
    assert alerts(d, "probe.degraded") == []

    docker.stop()
    status = until(lambda: (s := d.call("status")) and "containers" in s["degraded"] and s, 30,
                   "the containers probe degraded")
    assert "degraded: containers" in status["summary"]
    until(lambda: any(a["kind"] == "probe.degraded" and a["key"] == "containers"
                      for a in d.call("status")["active_alerts"]), 30, "a probe.degraded alert")  # after its hold
    view = d.call("containers.list")
    assert view["error"] and "unreachable" in view["error"]
    assert "docker: unreachable" in ctl(d, "containers").stdout

    docker.start()
    until(lambda: "containers" not in d.call("status")["degraded"], 30, "the containers probe recovered")
    until(lambda: not any(a["kind"] == "probe.degraded" for a in d.call("status")["active_alerts"]), 30,
          "the probe.degraded alert resolved")
    resolved = alerts(d, "probe.degraded", "containers")
    assert len(resolved) == 1 and resolved[0]["resolved_at"] is not None
    until(lambda: "survivor" in rows(d), 30, "survivor (restart policy always) back in the view")
    assert d.call("containers.list")["error"] is None
    assert d.proc.poll() is None


def test_a_label_pointing_at_a_junk_server_stops_no_pass(docker, make_daemon):
    # Anyone who may run a container writes its labels; this one points the daemon at a server answering junk.
    junk = JunkServer(json.dumps(["not", {"models": "ollama's"}]).encode())
    try:
        docker.run("labelled", steady(), labels={"memwarden.ollama_url": junk.url})
        d = make_daemon(config=config(docker)).start()
        until(lambda: "labelled" in rows(d), 10, "the labelled container")
        wait_passes(d, 5)
        assert junk.requests == 0  # not a URL the config lists: never fetched
        assert rows(d)["labelled"]["models_loaded"] is None

        # Listed in the config, it is read every pass; its junk is an unknown count, never a stopped pass.
        d.write_config({**d.sections, "containers": {**d.sections["containers"], "ollama_urls": [junk.url]}})
        assert d.call("config.reload")["reloaded"] is True
        until(lambda: junk.requests >= 3, 15, "the listed server read")
        wait_passes(d, 5)
        assert rows(d)["labelled"]["models_loaded"] is None
        assert alerts(d, "component.failed") == [] and alerts(d, "probe.degraded") == []
        assert d.proc.poll() is None
    finally:
        junk.close()
