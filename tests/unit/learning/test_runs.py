"""RunStore and VersionStore on the real schema: the one owner of each table."""

from __future__ import annotations

import pytest

from memwarden.learning.runs import STATES, RunStore
from memwarden.learning.versions import VersionStore

from .conftest import T0


@pytest.fixture
def runs(db) -> RunStore:
    return RunStore(db)


@pytest.fixture
def versions(db) -> VersionStore:
    return VersionStore(db)


def add(runs: RunStore, run_id: str, adapter: str = "alice", at: float = T0, state: str = "queued", **fields):
    runs.insert(run_id, adapter, adapter, "threshold", at, "lora")
    if state != "queued" or fields:
        runs.set_state(run_id, state, **fields)


def test_a_new_run_is_queued_and_its_fields_update(runs):
    add(runs, "r1")
    row = runs.get("r1")
    assert (row["state"], row["trigger"], row["method"], row["promoted"]) == ("queued", "threshold", "lora", 0)
    runs.update("r1", memory_ids="[3, 1, 2]", eval='{"holdout_loss_after": 1.5}')
    assert runs.memory_ids("r1") == [3, 1, 2]
    assert runs.state("r1") == "queued"


def test_an_unknown_state_is_refused(runs):
    add(runs, "r1")
    with pytest.raises(ValueError, match="unknown run state"):
        runs.set_state("r1", "done")


def test_history_is_newest_first_filtered_and_decoded(runs):
    add(runs, "r1", at=T0, state="promoted", eval='{"holdout_loss_after": 1.5}', memory_ids="[1, 2, 3]")
    add(runs, "r2", "bob", at=T0 + 1)
    add(runs, "r3", at=T0 + 2)
    assert [r["id"] for r in runs.history()] == ["r3", "r2", "r1"]
    assert [r["id"] for r in runs.history(limit=2)] == ["r3", "r2"]
    alice = runs.history(adapter="alice")
    assert [r["id"] for r in alice] == ["r3", "r1"]
    assert alice[1]["eval"] == {"holdout_loss_after": 1.5} and alice[1]["memory_ids"] == 3
    assert alice[0]["eval"] is None and alice[0]["memory_ids"] == 0


def test_recall_is_the_recall_part_of_a_runs_evaluation(runs):
    add(runs, "r1", state="promoted", eval='{"holdout_loss_after": 1.5, "recall": 0.9, "recall_memories": 40, '
        '"probe_recall_after": 0.5}')
    add(runs, "r2")
    assert runs.recall("r1") == {"recall": 0.9, "recall_memories": 40, "probe_recall_after": 0.5}
    assert runs.recall("r2") == {} and runs.recall("nope") == {} and runs.recall(None) == {}


def test_pending_runs_are_the_relaunchable_ones_oldest_first(runs):
    for i, state in enumerate(("promoted", "preempted", "queued", "running", "waiting", "interrupted", "failed")):
        add(runs, f"r{i}", at=T0 + 10 - i, state=state)
    assert runs.pending() == ["r5", "r4", "r2", "r1"]
    assert runs.pending(limit=1) == ["r5"]


def test_at_start_a_run_left_in_progress_is_interrupted(runs):
    add(runs, "r1", state="running")
    add(runs, "r2", state="curating")
    add(runs, "r3", state="preempted")
    assert sorted(runs.interrupt_in_progress()) == ["r1", "r2"]
    assert [runs.state(r) for r in ("r1", "r2", "r3")] == ["interrupted", "interrupted", "preempted"]


def test_count_by_state_names_every_state(runs):
    add(runs, "r1", state="promoted")
    add(runs, "r2", state="promoted")
    add(runs, "r3", state="failed")
    counts = runs.count_by_state()
    assert set(counts) == set(STATES)
    assert (counts["promoted"], counts["failed"], counts["queued"]) == (2, 1, 0)


def test_last_run_times_prefer_the_start_and_active_adapters_are_unfinished(runs):
    add(runs, "r1", at=T0, state="promoted", started_at=T0 + 50, finished_at=T0 + 60)
    add(runs, "r2", at=T0 + 10)  # never started: its creation counts
    add(runs, "r3", "bob", at=T0 + 5, state="failed", finished_at=T0 + 6)
    assert runs.last_run_times() == {"alice": T0 + 50, "bob": T0 + 5}
    assert runs.active_adapters() == {"alice"}


def test_due_report_counts_known_adapters_with_no_importance_and_running_ones(runs, make_config):
    cfg = make_config({"importance_threshold": 20, "min_interval": "1h"}).learning
    add(runs, "r1", "carol", at=T0 - 100)  # unfinished
    add(runs, "r2", "bob", at=T0 - 1800, state="promoted", finished_at=T0 - 1700)
    report = runs.due_report(T0, {"alice": 25.0, "bob": 30.0}, cfg, known=["dave"])
    by = {d.adapter: d for d in report}
    assert [d.adapter for d in report] == ["alice", "bob", "carol", "dave"]
    assert by["alice"].due and by["alice"].reason == "due"
    assert by["bob"].reason == "min_interval" and by["bob"].wait_s == pytest.approx(1800)
    assert by["carol"].reason == "running"
    assert by["dave"].reason == "below_threshold" and by["dave"].importance == 0.0
    assert [d.adapter for d in runs.due_report(T0, {"alice": 25.0}, cfg)] == ["alice", "carol"]


def test_versions_promote_activate_and_prune(versions, db):
    assert versions.active("alice") is None and versions.next_number("alice") == 1
    for v in (1, 2, 3, 4):
        with db.atomic():
            versions.promote("alice", v, f"r{v}", f"/v/{v}", T0 + v)
    versions.promote("bob", 1, "b1", "/b/1", T0)
    assert versions.active("alice").version == 4 and versions.next_number("alice") == 5
    assert [(r["adapter"], r["version"], r["active"]) for r in versions.listing()] == [
        ("alice", 1, 0), ("alice", 2, 0), ("alice", 3, 0), ("alice", 4, 1), ("bob", 1, 1)]
    assert versions.previous("alice", 4).version == 3 and versions.previous("alice", 1) is None
    versions.activate("alice", 3)
    assert versions.active("alice").version == 3 and versions.active("bob").version == 1
    # keep 2: the active one and the newest inactive one stay.
    assert [v.version for v in versions.beyond_keep("alice", 2)] == [2, 1]
    versions.set_ollama_model("alice", 3, "memwarden/alice:v3")
    assert versions.active("alice").ollama_model == "memwarden/alice:v3"
    versions.delete("alice", 1)
    assert [r["version"] for r in versions.listing() if r["adapter"] == "alice"] == [2, 3, 4]
