"""The state file deleted, moved or replaced under an open connection: noticed, and written back to its path."""

from __future__ import annotations

import errno
import json
import os
import sqlite3

import pytest

from memwarden.learning.store import MemoryStore
from memwarden.state import file_watch
from memwarden.state.db import DB_NAME, open_state
from memwarden.state.file_watch import Placement, StateFile, Verdict, judge
from memwarden.state.health import RESTORED_ALERT_HOLD, StateHealth

SIDE = ("-wal", "-shm")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path):
    db = open_state(tmp_path)
    clock = Clock()
    health = StateHealth(tmp_path / DB_NAME, db, clock=clock)
    yield health, db, clock
    db.close()
    health.close()


def add(store: MemoryStore, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        store.add("alice", "journal", f"memory {i}", importance=3)


def rows_in_file(path) -> list[str]:
    """What a fresh process would find at the path (the daemon restarted)."""
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT content FROM memories ORDER BY id")]
    finally:
        conn.close()


def delete_with_side_files(path) -> None:
    for suffix in ("", *SIDE):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("placement, verdict", [
    (Placement((1, 10), 1, (1, 10)), Verdict.IN_PLACE),
    (Placement((1, 10), 2, (1, 10)), Verdict.IN_PLACE),  # a hard link elsewhere changes nothing
    (Placement((1, 10), 0, None), Verdict.GONE),  # rm
    (Placement((1, 10), 1, None), Verdict.GONE),  # mv elsewhere
    (Placement((1, 10), 0, (1, 11)), Verdict.REPLACED),  # another file renamed over it
    (Placement((1, 10), 1, (1, 11)), Verdict.REPLACED),  # moved aside, another file put in its place
    (Placement((1, 10), 1, (2, 10)), Verdict.REPLACED),  # same inode number, another filesystem
])
def test_judge_compares_the_open_file_with_the_path(placement, verdict):
    assert judge(placement) is verdict


def test_nothing_happens_while_the_file_is_in_place(state):
    health, db, _ = state
    conn = db.conn
    health.check()
    assert health.file.last is None and db.conn is conn and health.conditions() == []


def test_a_deleted_database_is_written_back_and_later_writes_survive_a_restart(state, tmp_path):
    health, db, _ = state
    path = tmp_path / DB_NAME
    store = MemoryStore(db, [])
    add(store, 50)
    delete_with_side_files(path)
    add(store, 10, start=50)  # lands in the unlinked file: only the write-back keeps it
    assert health.file.sense().open_links == 0

    health.check()
    assert health.file.last.verdict is Verdict.GONE and health.file.last.error is None
    assert path.exists() and judge(health.file.sense()) is Verdict.IN_PLACE
    add(store, 10, start=60)  # the same store, the same Database object: now on the restored file
    assert store.count()["total"] == 70
    db.close()
    assert rows_in_file(path) == [f"memory {i}" for i in range(70)]
    assert not [p.name for p in tmp_path.iterdir() if ".restore-" in p.name or ".carried-" in p.name]


def test_the_alert_is_critical_names_the_file_and_holds_for_an_hour(state, tmp_path):
    health, _, clock = state
    path = tmp_path / DB_NAME
    delete_with_side_files(path)
    health.check()
    [cond] = health.conditions()
    assert (cond.kind, cond.key, cond.severity) == ("state.file", str(path), "critical")
    assert f"state database {path} was deleted or moved" in cond.message and "nothing lost" in cond.message
    assert cond.fields["verdict"] == "gone" and cond.fields["open_links"] == 0
    clock.now += RESTORED_ALERT_HOLD - 1
    assert health.conditions()
    clock.now += 2
    assert health.conditions() == []


def test_a_moved_database_is_written_back_and_the_moved_copy_left_where_it_went(state, tmp_path):
    health, db, _ = state
    path = tmp_path / DB_NAME
    store = MemoryStore(db, [])
    add(store, 5)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path.rename(tmp_path / "moved.db")
    health.check()
    assert health.file.last.verdict is Verdict.GONE
    add(store, 1, start=5)
    assert (tmp_path / "moved.db").exists()
    db.close()
    assert len(rows_in_file(path)) == 6


def test_a_replaced_database_is_moved_aside_not_overwritten(state, tmp_path):
    health, db, _ = state
    path = tmp_path / DB_NAME
    store = MemoryStore(db, [])
    add(store, 3)
    other = tmp_path / "other.db"
    foreign = sqlite3.connect(other)
    foreign.execute("CREATE TABLE theirs (x)")
    foreign.execute("INSERT INTO theirs VALUES ('kept')")
    foreign.commit()
    foreign.close()
    os.rename(other, path)

    health.check()
    last = health.file.last
    assert last.verdict is Verdict.REPLACED and last.error is None
    [(found, aside)] = last.moved_aside
    assert found == str(path) and ".replaced-" in aside
    assert sqlite3.connect(aside).execute("SELECT x FROM theirs").fetchall() == [("kept",)]
    [cond] = health.conditions()
    assert "was replaced by another file" in cond.message and aside in cond.message
    add(store, 1, start=3)
    db.close()
    assert rows_in_file(path) == [f"memory {i}" for i in range(4)]


def test_tables_the_stores_hold_follow_the_swap(state, tmp_path):
    health, db, _ = state
    table = db["alert_history"]  # as AlertHistory, LeaseStore and RestartHistory keep theirs
    delete_with_side_files(tmp_path / DB_NAME)
    health.check()
    table.insert({"kind": "k", "key": "x", "severity": "warning", "message": "m", "raised_at": 1.0})
    db.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("SELECT kind FROM alert_history").fetchall() == [("k",)]
    conn.close()


def test_a_staged_import_survives_the_write_back(state, tmp_path):
    health, db, _ = state
    store = MemoryStore(db, [])
    token = store.begin_import()
    lines = [json.dumps({"profile": "bob", "kind": "journal", "importance": 4, "content": f"staged {i}"})
             for i in range(7)]
    store.stage(token, lines, 1)
    delete_with_side_files(tmp_path / DB_NAME)
    health.check()
    assert health.file.last.error is None
    assert store.commit_import(token, total_lines=7)["imported"] == 7
    db.close()
    assert rows_in_file(tmp_path / DB_NAME) == [f"staged {i}" for i in range(7)]


def test_a_failed_write_back_keeps_the_old_connection_and_says_do_not_stop(state, tmp_path, monkeypatch):
    health, db, _ = state
    path = tmp_path / DB_NAME
    store = MemoryStore(db, [])
    add(store, 2)
    conn = db.conn
    real_backup = file_watch._backup

    def full(source, target, name):
        target.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_watch, "_backup", full)
    delete_with_side_files(path)
    health.check()
    last = health.file.last
    assert last.error is not None and "No space left on device" in last.error
    assert db.conn is conn and not path.exists()
    assert not [p.name for p in tmp_path.iterdir() if ".restore-" in p.name]
    [cond] = health.conditions()
    assert "could not be written back" in cond.message and "do not stop memwardend" in cond.message
    add(store, 1, start=2)  # still works, on the open file

    monkeypatch.setattr(file_watch, "_backup", real_backup)  # space again: the next pass puts it back
    health.check()
    assert health.file.last.error is None and health.file.last.count == 2
    db.close()
    assert len(rows_in_file(path)) == 3


def test_an_open_transaction_defers_the_write_back_to_the_next_pass(state, tmp_path):
    health, db, _ = state
    delete_with_side_files(tmp_path / DB_NAME)
    db.execute("BEGIN")
    health.check()
    assert health.file.last is None
    db.execute("COMMIT")
    health.check()
    assert health.file.last.verdict is Verdict.GONE


def test_close_after_the_connection_releases_the_descriptor(tmp_path):
    db = open_state(tmp_path)
    watch = StateFile(db, tmp_path / DB_NAME)
    fd = watch._fd
    db.close()
    watch.close()
    with pytest.raises(OSError):
        os.fstat(fd)
