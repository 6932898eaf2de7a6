import dataclasses
import json
from pathlib import Path
from types import MappingProxyType

import pytest

from memwarden.alerts.model import ActiveAlert, AlertEvent, Condition, EventType, reconcile

INTERVAL = 3600.0


def cond(kind="host.ram", key="host", severity="warning", message="RAM high", **fields):
    return Condition(kind, key, severity, message, MappingProxyType(fields))


def types(events):
    return [(e.type, e.alert.condition.kind) for e in events]


def test_new_condition_raises_once():
    active, events = reconcile({}, [cond(value=90)], "host", 100.0, INTERVAL)
    (event,) = events
    assert event.type is EventType.RAISED
    assert event.at == 100.0
    alert = active[("host.ram", "host")]
    assert alert == ActiveAlert(cond(value=90), raised_at=100.0, last_notified_at=100.0, notify_count=1)
    assert event.alert == alert


def test_no_renotify_before_interval_but_latest_condition_kept():
    active, _ = reconcile({}, [cond(value=90)], "host", 100.0, INTERVAL)
    active, events = reconcile(active, [cond(value=91, message="RAM higher")], "host", 100.0 + INTERVAL - 1,
                               INTERVAL)
    assert events == []
    alert = active[("host.ram", "host")]
    assert alert.condition.fields["value"] == 91
    assert alert.condition.message == "RAM higher"
    assert alert.raised_at == 100.0
    assert alert.last_notified_at == 100.0
    assert alert.notify_count == 1


def test_renotify_after_interval():
    active, _ = reconcile({}, [cond()], "host", 100.0, INTERVAL)
    active, events = reconcile(active, [cond()], "host", 100.0 + INTERVAL, INTERVAL)
    (event,) = events
    assert event.type is EventType.RENOTIFIED
    assert event.alert.raised_at == 100.0
    assert event.alert.last_notified_at == 100.0 + INTERVAL
    assert event.alert.notify_count == 2
    # and the next re-notification counts from the last one, not from the raise
    active, events = reconcile(active, [cond()], "host", 100.0 + 2 * INTERVAL - 1, INTERVAL)
    assert events == []
    active, events = reconcile(active, [cond()], "host", 100.0 + 2 * INTERVAL, INTERVAL)
    assert [e.alert.notify_count for e in events] == [3]


def test_severity_change_is_changed_event():
    active, _ = reconcile({}, [cond(severity="warning")], "host", 100.0, INTERVAL)
    active, events = reconcile(active, [cond(severity="critical")], "host", 110.0, INTERVAL)
    (event,) = events
    assert event.type is EventType.CHANGED
    assert event.alert.condition.severity == "critical"
    assert event.alert.raised_at == 100.0
    assert event.alert.last_notified_at == 110.0
    assert event.alert.notify_count == 2
    assert active[("host.ram", "host")].condition.severity == "critical"


def test_condition_gone_resolves():
    active, _ = reconcile({}, [cond()], "host", 100.0, INTERVAL)
    active, events = reconcile(active, [], "host", 150.0, INTERVAL)
    assert active == {}
    (event,) = events
    assert event.type is EventType.RESOLVED
    assert event.at == 150.0
    assert event.alert.raised_at == 100.0
    assert event.alert.condition.kind == "host.ram"


def test_other_scopes_untouched():
    gpu = ActiveAlert(cond(kind="gpu.vram", key="0"), 5.0, 5.0)
    hostlike = ActiveAlert(cond(kind="hostile.x"), 5.0, 5.0)  # prefix "host" but not "host."
    before = {("gpu.vram", "0"): gpu, ("hostile.x", "host"): hostlike}
    active, events = reconcile(before, [], "host", 100.0, INTERVAL)
    assert events == []
    assert active == before
    assert active[("gpu.vram", "0")] is gpu


def test_input_mapping_is_not_mutated():
    active, _ = reconcile({}, [cond()], "host", 100.0, INTERVAL)
    snapshot = dict(active)
    reconcile(active, [], "host", 200.0, INTERVAL)
    assert active == snapshot


def test_keys_are_independent():
    active, events = reconcile({}, [cond(kind="container.leak", key="a"), cond(kind="container.leak", key="b")],
                               "container", 1.0, INTERVAL)
    assert sorted(active) == [("container.leak", "a"), ("container.leak", "b")]
    active, events = reconcile(active, [cond(kind="container.leak", key="b")], "container", 2.0, INTERVAL)
    assert [(e.type, e.alert.condition.key) for e in events] == [(EventType.RESOLVED, "a")]
    assert list(active) == [("container.leak", "b")]


def test_mixed_raise_and_resolve_in_one_pass():
    active, _ = reconcile({}, [cond(kind="host.ram")], "host", 1.0, INTERVAL)
    active, events = reconcile(active, [cond(kind="host.swap")], "host", 2.0, INTERVAL)
    assert sorted(types(events)) == sorted([(EventType.RESOLVED, "host.ram"), (EventType.RAISED, "host.swap")])
    assert list(active) == [("host.swap", "host")]


@pytest.mark.parametrize("kind", ["gpu.vram", "host", "hostx.ram"])
def test_condition_outside_scope_is_value_error(kind):
    with pytest.raises(ValueError, match="outside scope 'host'"):
        reconcile({}, [cond(kind=kind)], "host", 1.0, INTERVAL)


def test_event_to_dict_is_json_ready():
    alert = ActiveAlert(cond(severity="critical", value=97.5, path=Path("/x")), 10.0,
                        20.0, 3)
    d = AlertEvent(EventType.CHANGED, alert, 20.0).to_dict()
    assert d == {"event": "changed", "kind": "host.ram", "key": "host", "severity": "critical",
                 "message": "RAM high", "fields": {"value": 97.5, "path": "/x"}, "raised_at": 10.0, "at": 20.0,
                 "notify_count": 3}
    json.dumps(d)


def test_condition_ident_and_frozen():
    c = cond(kind="gpu.vram", key="1")
    assert c.ident == ("gpu.vram", "1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.severity = "critical"  # type: ignore[misc]
