"""The alert hold stepped through with a fake clock: a condition is raised once it has lasted its kind's hold
unbroken, and resolves once it has been gone that long; the dispatcher applies it on the monotonic clock."""

from __future__ import annotations

import re
from types import MappingProxyType

import pytest

from memwarden.alerts.dispatch import AlertDispatcher
from memwarden.alerts.history import AlertHistory
from memwarden.alerts.hold import hold
from memwarden.alerts.model import Condition, reconcile
from memwarden.config import ConfigError, parse_config
from memwarden.config.holds import holds
from memwarden.config.schema import AlertsConfig
from memwarden.state.db import open_state
from support.clock import Clock

SLOW = Condition("training.throughput", "alice", "warning", "training alice: 40 tokens/s, 60% below the run's 100",
                 MappingProxyType({"tokens_per_s": 40}))
HOLDS = holds({"training": "1m", "probe": "5s"})


class Lifecycle:
    """hold() then reconcile(), as the dispatcher runs them, for one scope."""

    def __init__(self, clock: Clock, scope: str = "training"):
        self.clock, self.scope = clock, scope
        self.active: dict = {}
        self.since: dict = {}
        self.events: list[str] = []

    def step(self, *conditions: Condition, dt: float = 1.0) -> list[str]:
        now = self.clock.advance(dt)
        passed, self.since = hold(self.active, conditions, self.scope, now, HOLDS.of, self.since)
        self.active, events = reconcile(self.active, passed, self.scope, now, 3600)
        said = [e.type.value for e in events]
        self.events += said
        return said

    def run(self, seconds: int, *conditions: Condition) -> list[str]:
        return [e for _ in range(seconds) for e in self.step(*conditions)]


def test_a_throughput_dip_of_seconds_raises_nothing():
    life = Lifecycle(Clock(1000.0))
    assert life.run(10, SLOW) == []  # 10 s slow: a busy CPU, not a problem
    assert life.run(30) == []
    assert life.active == {} and life.since == {}


def test_a_condition_is_raised_once_it_lasted_its_hold_unbroken():
    life = Lifecycle(Clock(1000.0))
    assert life.step(SLOW, dt=0) == []  # first seen
    assert life.run(59, SLOW) == []
    assert life.step() == []  # one pass without it: the count starts over
    assert life.run(59, SLOW) == []
    assert life.step(SLOW) == []
    assert life.step(SLOW) == ["raised"]  # 60 s unbroken since it came back
    assert life.run(30, SLOW) == []


def test_an_active_alert_resolves_once_gone_for_its_hold_and_a_blip_back_restarts_the_count():
    life = Lifecycle(Clock(1000.0))
    life.step(SLOW, dt=0)
    life.run(60, SLOW)
    assert life.events == ["raised"]
    assert life.run(59) == []  # gone 59 s: still active
    assert ("training.throughput", "alice") in life.active
    assert life.step(SLOW) == []  # back for a pass: no event, the count to resolve starts over
    assert life.step() == []
    assert life.run(59) == []
    assert life.step() == ["resolved"]
    assert life.active == {} and life.since == {}


def test_a_kind_held_0s_is_raised_and_resolved_at_once():
    life = Lifecycle(Clock(1000.0))
    failed = Condition("training.failed", "alice", "warning", "training run r1 of alice failed: boom")
    assert life.step(failed) == ["raised"]
    assert life.step() == ["resolved"]


def test_a_severity_change_of_an_active_alert_is_not_held():
    life = Lifecycle(Clock(1000.0))
    life.step(SLOW, dt=0)
    life.run(60, SLOW)
    worse = Condition(SLOW.kind, SLOW.key, "critical", SLOW.message)
    assert life.step(worse) == ["changed"]


def test_other_scopes_pending_conditions_are_left_alone():
    clock = Clock(1000.0)
    since = {("probe.degraded", "ollama"): 990.0}
    passed, since = hold({}, [SLOW], "training", clock(), HOLDS.of, since)
    assert passed == [] and since == {("probe.degraded", "ollama"): 990.0, SLOW.ident: 1000.0}


def test_the_most_specific_key_wins_and_a_table_changes_only_the_keys_it_names():
    h = holds({"training.throughput": "5m", "default": "10s"})
    assert (h.of("training.throughput"), h.of("training.loss"), h.of("training.failed")) == (300, 60, 0)
    assert (h.of("host.ram"), h.of("probe.degraded"), h.of("metrics.unavailable")) == (0, 10, 10)
    assert AlertsConfig().hold.of("training.throughput") == 60 and AlertsConfig().hold.of("probe.degraded") == 5


@pytest.mark.parametrize(("hold_table", "problem"), [
    ({"trainin": "1m"}, "at 'alerts.hold.trainin': unknown alert kind; did you mean 'training'?"),
    ({"training.loss": "soon"}, "at 'alerts.hold.\"training.loss\"': expected a duration"),
    ("1m", "at 'alerts.hold': expected a table such as"),
])
def test_a_bad_hold_names_its_key_path(hold_table, problem):
    with pytest.raises(ConfigError) as err:
        parse_config({"alerts": {"hold": hold_table}}, env={"STATE_DIRECTORY": "/tmp/x", "RUNTIME_DIRECTORY": "/tmp"},
                     uid=1000)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(problem), err.value.problems


def test_the_dispatcher_holds_on_the_monotonic_clock(tmp_path):
    db = open_state(tmp_path / "state")
    try:
        mono = Clock(1000.0)
        d = AlertDispatcher(AlertHistory(db), AlertsConfig(hold=HOLDS), mono=mono)
        wall = 1_800_000_000.0
        assert d.update("training", [SLOW], wall) == []
        mono.advance(30)
        assert d.update("training", [SLOW], wall + 3600) == []  # the wall clock stepped an hour: no matter
        mono.advance(30)
        assert [e.type.value for e in d.update("training", [SLOW], wall + 3630)] == ["raised"]
    finally:
        db.close()


def test_every_kind_the_alerts_page_lists_can_be_given_a_hold():
    from pathlib import Path

    from memwarden.config.holds import KINDS

    page = (Path(__file__).resolve().parents[3] / "docs" / "alerts.md").read_text()
    listed = re.findall(r"`([a-z]+\.[a-z_]+)`", page[page.index("*kind*"):page.index("*key*")])
    assert set(listed) == set(KINDS)
