"""The trigger policy: due when importance reaches the threshold and min_interval has passed; else why not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from memwarden.config.schema import LearningConfig
from memwarden.learning.trigger import (
    BELOW_THRESHOLD,
    DUE,
    MIN_INTERVAL,
    RUNNING,
    decide,
    due_adapters,
    next_window_start,
)

HOUR = 3600.0
NOW = 1_000_000.0


@dataclass(frozen=True)
class Cfg:
    importance_threshold: float = 150.0
    min_interval: float = 6 * HOUR


def test_below_threshold_says_by_how_much():
    d = decide("alice", 120, None, False, 150, 6 * HOUR, NOW)
    assert (d.due, d.reason, d.shortfall, d.wait_s) == (False, BELOW_THRESHOLD, 30, 0)
    assert d.message == "importance 120 of 150: 30 short"


def test_due_at_the_threshold_with_no_run_before():
    d = decide("alice", 150, None, False, 150, 6 * HOUR, NOW)
    assert (d.due, d.reason, d.shortfall) == (True, DUE, 0)
    assert d.message == "importance 150 ≥ 150; no run before"


def test_min_interval_remaining():
    d = decide("alice", 400, NOW - 2 * HOUR, False, 150, 6 * HOUR, NOW)
    assert (d.due, d.reason, d.wait_s) == (False, MIN_INTERVAL, 4 * HOUR)
    assert "last run started 2h ago: 4h of min_interval 6h remain" in d.message
    later = decide("alice", 400, NOW - 6 * HOUR, False, 150, 6 * HOUR, NOW)
    assert later.due and "last run started 6h ago" in later.message


def test_a_running_adapter_is_never_due_and_that_comes_first():
    d = decide("alice", 10, NOW - 60, True, 150, 6 * HOUR, NOW)
    assert (d.due, d.reason) == (False, RUNNING)


def test_every_decision_carries_its_inputs():
    d = decide("alice", 160, NOW - 7 * HOUR, False, 150, 6 * HOUR, NOW)
    fields = d.log_fields()
    assert fields["decision"] == "learning.due"
    assert {k: fields[k] for k in ("adapter", "importance", "threshold", "last_run_at", "min_interval", "running",
                                   "now", "due", "reason")} == {
        "adapter": "alice", "importance": 160, "threshold": 150, "last_run_at": NOW - 7 * HOUR,
        "min_interval": 6 * HOUR, "running": False, "now": NOW, "due": True, "reason": DUE}
    assert d.to_dict()["message"] == d.message


def test_due_adapters_over_many():
    decisions = due_adapters(
        {"bob": 200, "alice": 90, "carol": 500, "dave": 151},
        {"carol": NOW - HOUR, "dave": NOW - 10 * HOUR},
        {"erin"}, Cfg(), NOW)
    assert [(d.adapter, d.reason) for d in decisions] == [
        ("alice", BELOW_THRESHOLD), ("bob", DUE), ("carol", MIN_INTERVAL), ("dave", DUE), ("erin", RUNNING)]
    assert decisions[-1].importance == 0


def test_takes_the_learning_config_itself():
    cfg = LearningConfig()
    (d,) = due_adapters({"alice": cfg.importance_threshold}, {}, (), cfg, NOW)
    assert d.due and d.threshold == 150 and d.min_interval == 6 * HOUR


def ts(*args):
    return datetime(*args, tzinfo=UTC).timestamp()


def test_next_window_start():
    now = ts(2026, 3, 1, 1, 30, 15)
    assert next_window_start("", now) == now
    assert next_window_start("0 2 * * *", now, "UTC") == ts(2026, 3, 1, 2, 0)
    assert next_window_start("0 2 * * *", ts(2026, 3, 1, 2, 0, 30), "UTC") == ts(2026, 3, 2, 2, 0)
    assert next_window_start("0 2 * * *", ts(2026, 3, 1, 2, 0), "UTC") == ts(2026, 3, 1, 2, 0)  # on the dot
    assert next_window_start("* 1-4 * * *", now, "UTC") == ts(2026, 3, 1, 1, 31)  # inside a window
    assert next_window_start("30 3 * * sat", now, "UTC") == ts(2026, 3, 7, 3, 30)  # 2026-03-01 is a Sunday


def test_next_window_start_in_local_time_is_never_before_now():
    now = ts(2026, 6, 1, 12, 0) + 0.5
    assert now <= next_window_start("*/15 * * * *", now) <= now + 15 * 60


def test_a_bad_window_is_a_value_error():
    with pytest.raises(ValueError):
        next_window_start("not cron", NOW)
