"""The alert effector over a real state database: what each update raises, renotifies and resolves reaches the
history and every sink, a history that cannot be written stops no delivery, and alerts open at a restart are
resumed rather than raised again."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from types import MappingProxyType

import pytest

from memwarden.alerts.dispatch import AlertDispatcher
from memwarden.alerts.history import AlertHistory
from memwarden.alerts.model import Condition
from memwarden.config.schema import AlertsConfig
from memwarden.state.db import open_state
from support.clock import Clock

HOT = Condition("host.ram", "host", "warning", "RAM 90% used", MappingProxyType({"value": 90.0}))
T0 = 1_800_000_000.0


class Inbox:
    def __init__(self):
        self.events: list[dict] = []

    def submit(self, event: dict) -> None:
        self.events.append(event)

    def kinds(self) -> list[tuple[str, str]]:
        return [(e["event"], e["kind"]) for e in self.events]


@pytest.fixture
def db(tmp_path):
    conn = open_state(tmp_path / "state")
    yield conn
    conn.close()


def dispatcher(db, mono: Clock, **cfg) -> tuple[AlertDispatcher, Inbox]:
    d = AlertDispatcher(AlertHistory(db), AlertsConfig(**cfg), mono=mono)
    inbox = Inbox()
    d.sinks = [inbox]
    return d, inbox


def test_raised_renotified_changed_and_resolved_reach_history_and_sinks(db):
    mono = Clock(100.0)
    d, inbox = dispatcher(db, mono, renotify_interval=60.0)
    d.update("host", [HOT], T0)
    mono.now += 30
    d.update("host", [HOT], T0 + 30)  # within the interval: nothing new
    mono.now += 31
    d.update("host", [HOT], T0 + 61)
    mono.now += 1
    d.update("host", [replace(HOT, severity="critical", message="RAM 97% used")], T0 + 62)
    mono.now += 1
    d.update("host", [], T0 + 63)
    assert [e for e, _ in inbox.kinds()] == ["raised", "renotified", "changed", "resolved"]
    assert d.active == {}
    assert d.raised == {("host.ram", "warning"): 1}
    (row,) = d.history.recent(10)
    assert (row["kind"], row["raised_at"], row["resolved_at"]) == ("host.ram", T0, T0 + 63)


def test_an_update_resolves_only_its_own_scope(db):
    d, inbox = dispatcher(db, Clock(0.0))
    gpu = Condition("gpu.temperature", "0", "warning", "GPU 0 at 86 °C")
    d.update("host", [HOT], T0)
    d.update("gpu", [gpu], T0)
    d.update("gpu", [], T0 + 1)
    assert [a["kind"] for a in d.active_list()] == ["host.ram"]
    assert inbox.kinds() == [("raised", "host.ram"), ("raised", "gpu.temperature"), ("resolved", "gpu.temperature")]


def test_a_history_that_cannot_be_written_still_delivers_and_tells_its_hook(db):
    d, inbox = dispatcher(db, Clock(0.0))
    failures: list[Exception] = []
    d.on_record_error = failures.append

    def full(event) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    d.history.record = full  # type: ignore[method-assign]
    d.update("host", [HOT], T0)
    assert inbox.kinds() == [("raised", "host.ram")]
    assert [str(f) for f in failures] == ["database or disk is full"]
    assert [a["kind"] for a in d.active_list()] == ["host.ram"]


def test_alerts_open_at_a_restart_are_resumed_not_raised_again(db):
    first, _ = dispatcher(db, Clock(0.0))
    first.update("host", [HOT], T0)
    again, inbox = dispatcher(db, Clock(0.0))
    assert [a["kind"] for a in again.active_list()] == ["host.ram"]
    again.update("host", [HOT], T0 + 5)
    assert inbox.events == []  # the same alert, still active: nothing to say yet
    again.update("host", [], T0 + 6)
    assert inbox.kinds() == [("resolved", "host.ram")]


async def test_a_reload_rebuilds_the_sinks_only_when_the_alerts_section_changed(db):
    d = AlertDispatcher(AlertHistory(db), AlertsConfig(), mono=Clock(0.0))
    assert d.sinks == []
    await d.reconfigure(AlertsConfig())
    assert d.sinks == []
    await d.reconfigure(AlertsConfig(webhook="http://127.0.0.1:9/hook"))
    assert [type(s).__name__ for s in d.sinks] == ["WebhookSink"]
    await d.close()
