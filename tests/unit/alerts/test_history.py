from types import MappingProxyType

import pytest

from memwarden.alerts.history import AlertHistory
from memwarden.alerts.model import ActiveAlert, AlertEvent, Condition, EventType, reconcile
from memwarden.state.db import open_state


@pytest.fixture
def history(tmp_path):
    db = open_state(tmp_path)
    yield AlertHistory(db)
    db.close()


def cond(kind="host.ram", key="host", severity="warning", message="RAM high", **fields):
    return Condition(kind, key, severity, message, MappingProxyType(fields))


def record_all(history, events):
    for e in events:
        history.record(e)


def test_raise_then_open_alerts_round_trip(history):
    alert = ActiveAlert(cond(value=90.5, metric="ram"), raised_at=100.0, last_notified_at=100.0)
    history.record(AlertEvent(EventType.RAISED, alert, 100.0))
    (loaded,) = history.open_alerts()
    assert loaded.condition.ident == ("host.ram", "host")
    assert loaded.condition.severity == "warning"
    assert loaded.condition.message == "RAM high"
    assert dict(loaded.condition.fields) == {"value": 90.5, "metric": "ram"}
    assert isinstance(loaded.condition.fields, MappingProxyType)
    assert (loaded.raised_at, loaded.last_notified_at, loaded.notify_count) == (100.0, 100.0, 1)


def test_lifecycle_updates_one_row(history):
    active, events = reconcile({}, [cond()], "host", 100.0, 60.0)
    record_all(history, events)
    active, events = reconcile(active, [cond(severity="critical", message="RAM very high")], "host", 110.0, 60.0)
    record_all(history, events)
    active, events = reconcile(active, [cond(severity="critical")], "host", 200.0, 60.0)
    assert [e.type for e in events] == [EventType.RENOTIFIED]
    record_all(history, events)
    (row,) = history.recent()
    assert row["severity"] == "critical"
    assert row["notify_count"] == 3
    assert row["last_event_at"] == 200.0
    assert row["raised_at"] == 100.0
    assert row["resolved_at"] is None
    (open_alert,) = history.open_alerts()
    assert open_alert.last_notified_at == 200.0

    _, events = reconcile(active, [], "host", 300.0, 60.0)
    record_all(history, events)
    assert history.open_alerts() == []
    (row,) = history.recent()
    assert row["resolved_at"] == 300.0
    assert row["severity"] == "critical"  # resolve keeps the last severity
    assert row["last_event_at"] == 300.0


def test_reraise_after_resolve_is_a_new_row(history):
    active, events = reconcile({}, [cond()], "host", 1.0, 60.0)
    record_all(history, events)
    active, events = reconcile(active, [], "host", 2.0, 60.0)
    record_all(history, events)
    active, events = reconcile(active, [cond()], "host", 3.0, 60.0)
    record_all(history, events)
    rows = history.recent()
    assert [(r["raised_at"], r["resolved_at"]) for r in rows] == [(3.0, None), (1.0, 2.0)]
    assert len(history.open_alerts()) == 1


def test_resolve_without_open_row_inserts_a_closed_row(history):
    alert = ActiveAlert(cond(), raised_at=5.0, last_notified_at=5.0)
    history.record(AlertEvent(EventType.RESOLVED, alert, 9.0))
    (row,) = history.recent()
    assert (row["raised_at"], row["resolved_at"]) == (5.0, 9.0)
    assert history.open_alerts() == []


def test_open_alerts_restore_reconcile_state(history):
    active, events = reconcile({}, [cond(kind="host.ram"), cond(kind="host.swap")], "host", 10.0, 60.0)
    record_all(history, events)
    restored = {a.condition.ident: a for a in history.open_alerts()}
    assert set(restored) == set(active)
    # A restart with the same conditions does not raise them again.
    _, events = reconcile(restored, [cond(kind="host.ram"), cond(kind="host.swap")], "host", 20.0, 60.0)
    assert events == []


def test_recent_is_newest_first_and_limited(history):
    for n in range(5):
        alert = ActiveAlert(cond(kind=f"host.k{n}", n=n), raised_at=float(n), last_notified_at=float(n))
        history.record(AlertEvent(EventType.RAISED, alert, float(n)))
    rows = history.recent(3)
    assert [r["kind"] for r in rows] == ["host.k4", "host.k3", "host.k2"]
    assert rows[0]["fields"] == {"n": 4}


def test_prune_removes_only_old_resolved(history):
    def add(kind, raised, resolved):
        alert = ActiveAlert(cond(kind=kind), raised_at=raised, last_notified_at=raised)
        history.record(AlertEvent(EventType.RAISED, alert, raised))
        if resolved is not None:
            history.record(AlertEvent(EventType.RESOLVED, alert, resolved))

    add("host.old", 1.0, 2.0)
    add("host.older", 0.5, 1.0)
    add("host.recent", 3.0, 50.0)
    add("host.open", 0.0, None)
    assert history.prune(10.0) == 2
    assert sorted(r["kind"] for r in history.recent()) == ["host.open", "host.recent"]
    assert history.prune(10.0) == 0
