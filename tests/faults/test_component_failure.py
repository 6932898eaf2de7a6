"""One component of the sample pass raising something nobody foresaw: the failure stays local.

The real memwardend runs with one policy or effector made to raise while a flag file exists
(support/faulty_daemon.py). The pass goes on without that component: READY, STATUS and WATCHDOG keep coming,
the other components keep working, a critical component.failed alert names the component and the error, and it
resolves on the first pass in which the component runs to its end again.
"""

from __future__ import annotations

import pytest

from memwarden.logs.journald import message_id
from support import faulty_daemon
from support.ollama_double.manager import wait_until

WATCHDOG = {"WATCHDOG_USEC": "30000000"}  # systemd's WatchdogSec=30s: a WATCHDOG=1 after every pass

# (what fails, the component it is part of)
FAULTS = [
    ("memwarden.sample_pass:evaluate", "host"),  # the host-memory policy
    ("memwarden.learning.supervisor:LearningSupervisor.tick", "learning"),  # an async effector
    ("memwarden.alerts.dispatch:AlertDispatcher.update", "probes"),  # the alert effector itself, in any scope
]


def count(d, key: str) -> int:
    return sum(1 for m in list(d.notify.messages) if key in m)


def failed_alerts(d) -> list[dict]:
    return [a for a in d.call("alerts", {"limit": 50})["active"] if a["kind"] == "component.failed"]


@pytest.mark.parametrize(("target", "component"), FAULTS[:2])
def test_a_failing_component_is_skipped_alerted_and_resolved(make_daemon, target, component):
    d = make_daemon(env=WATCHDOG)
    flag = d.workdir / "fail"
    flag.touch()  # failing from the very first pass: READY must come all the same
    d.start(argv=faulty_daemon.argv(target, flag, d.config_path))

    passes = count(d, "WATCHDOG")
    wait_until(lambda: count(d, "WATCHDOG") >= passes + 3, 30, message="three more watchdog pings")
    (alert,) = wait_until(lambda: failed_alerts(d), 20, message="a component.failed alert")
    assert alert["key"] == component and alert["severity"] == "critical"
    assert alert["fields"]["component"] == component
    assert alert["fields"]["error"] == f"RuntimeError: injected fault in {target}"
    status = d.call("status")
    assert f"failed: {component}" in status["summary"]
    if component != "host":
        assert d.call("host")["sampled"] is True  # the other components still run

    events = d.log_events()
    failures = [e for e in events if e.get("event") == "component failed; skipped this pass"]
    assert len(failures) == 1, failures  # logged once, with its traceback, not at every pass
    assert "Traceback" in failures[0]["exception"] and "injected fault" in failures[0]["exception"]
    raised = [e for e in events if e.get("alert_kind") == "component.failed"]
    assert raised and raised[0]["message_id"] == message_id("component.failed")
    assert not any(e.get("event") == "sample pass failed" for e in events)

    flag.unlink()
    wait_until(lambda: not failed_alerts(d), 20, message="the component.failed alert to resolve")
    recent = [a for a in d.call("alerts", {"limit": 50})["recent"] if a["kind"] == "component.failed"]
    assert recent[0]["resolved_at"] is not None
    assert any(e.get("event") == "component recovered" and e.get("component") == component
               for e in d.log_events())
    passes = count(d, "WATCHDOG")
    wait_until(lambda: count(d, "WATCHDOG") >= passes + 2, 30, message="passes after the recovery")
    assert d.proc.poll() is None


def test_the_alert_effector_failing_leaves_the_pass_and_the_watchdog_going(make_daemon):
    target, _ = FAULTS[2]
    # No hold: the failures the effector could not say are to be raised by the first pass that can.
    d = make_daemon(env=WATCHDOG, config={"alerts.hold": {"component": "0s"}})  # [alerts.hold]
    flag = d.workdir / "fail"
    flag.touch()
    d.start(argv=faulty_daemon.argv(target, flag, d.config_path))
    passes = count(d, "WATCHDOG")
    wait_until(lambda: count(d, "WATCHDOG") >= passes + 3, 30, message="three more watchdog pings")
    # No alert can go out while the dispatcher itself fails: the log says which components it took down.
    failed = {e.get("component") for e in d.log_events() if e.get("event") == "component failed; skipped this pass"}
    assert {"host", "probes", "alerts"} <= failed, failed
    flag.unlink()
    wait_until(lambda: any(e.get("event") == "component recovered" and e.get("component") == "alerts"
                           for e in d.log_events()), 20, message="the alert effector to recover")
    # Raised with the first pass that could (its own failure then shows), resolved with the next.
    wait_until(lambda: not failed_alerts(d), 20, message="every component.failed alert to resolve")
    recent = [a for a in d.call("alerts", {"limit": 50})["recent"] if a["kind"] == "component.failed"]
    assert recent and all(a["resolved_at"] is not None for a in recent)
