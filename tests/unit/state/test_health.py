import sqlite3

import pytest

from memwarden.state import health
from memwarden.state.db import DB_NAME, open_state
from memwarden.state.health import StateHealth, cause_of, describe


def error(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code
    return exc


@pytest.fixture
def state(tmp_path):
    db = open_state(tmp_path)
    yield StateHealth(tmp_path / DB_NAME, db, clock=lambda: 100.0), db
    db.close()


@pytest.mark.parametrize("message, code, cause, words", [
    ("database or disk is full", 13, "disk_full", "free some space"),
    ("database is locked", 5, "locked", "another process held it for more than 5s"),
    ("database table is locked", 6 | (1 << 8), "locked", "another process"),
    ("database disk image is malformed", 11, "corrupt", ".recover"),
    ("file is not a database", 26, "corrupt", "move the file aside"),
    ("disk I/O error", 10 | (3 << 8), "error", "state database error: disk I/O error"),
])
def test_each_cause_is_named_with_the_file_and_what_to_do(tmp_path, message, code, cause, words):
    exc = error(message, code)
    assert cause_of(exc) == cause
    text = describe(tmp_path / DB_NAME, exc)
    assert message in text and str(tmp_path / DB_NAME) in text and words in text


def test_a_real_lock_is_told_apart_and_clears_once_released(state, tmp_path):
    h, db = state
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    db.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(sqlite3.OperationalError) as caught:
        db.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'x', 0)")
    assert h.failed(caught.value, "memories.add").startswith("state database write failed: database is locked")
    (cond,) = h.conditions()
    assert cond.kind == "state.database" and cond.severity == "critical" and cond.fields["cause"] == "locked"
    h.check()
    assert h.conditions()  # still held: the check neither waits nor clears
    other.execute("ROLLBACK")
    other.close()
    h.check()
    assert h.conditions() == []
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000  # the check put the timeout back


def test_disk_full_clears_only_with_room_again(state, monkeypatch):
    h, _ = state
    h.failed(error("database or disk is full", 13), "memories.import")
    free = {"bytes": 4096}
    monkeypatch.setattr(health.shutil, "disk_usage", lambda p: type("U", (), {"free": free["bytes"]})())
    h.check()
    assert h.failure is not None and h.failure.cause == "disk_full"
    free["bytes"] = health.FREE_MARGIN
    h.check()
    assert h.failure is None


def test_corruption_stays_and_is_not_hidden_by_a_later_failure(state):
    h, _ = state
    h.failed(error("database disk image is malformed", 11), "memories.list")
    h.failed(error("database is locked", 5), "memories.add")
    h.check()
    assert h.failure.cause == "corrupt" and h.failure.count == 2
    assert "corrupt" in h.conditions()[0].message
