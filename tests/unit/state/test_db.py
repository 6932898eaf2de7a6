import random
import sqlite3

import pytest
import sqlite_utils

from memwarden.dirs import Unwritable
from memwarden.state.db import DB_NAME, MIGRATIONS, StateError, migrate, open_state, schema_version

NEWEST = max(v for v, _, _ in MIGRATIONS)


@pytest.fixture
def db(tmp_path):
    database = open_state(tmp_path / "state")
    yield database
    database.close()


def test_open_state_creates_dir_and_wal_database(tmp_path):
    state_dir = tmp_path / "a" / "b"
    db = open_state(state_dir)
    try:
        assert (state_dir / DB_NAME).is_file()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert {"schema_migrations", "alert_history"} <= set(db.table_names())
        assert schema_version(db) == NEWEST
    finally:
        db.close()


def test_alert_history_schema(db):
    cols = {c.name: c for c in db["alert_history"].columns}
    assert set(cols) == {"id", "kind", "key", "severity", "message", "fields", "raised_at", "last_event_at",
                         "resolved_at", "notify_count"}
    assert cols["kind"].notnull and cols["raised_at"].notnull
    assert not cols["resolved_at"].notnull
    assert db["alert_history"].pks == ["id"]


def test_migrate_is_idempotent(db):
    rows = list(db["schema_migrations"].rows)
    assert [r["version"] for r in rows] == [v for v, _, _ in MIGRATIONS]
    assert migrate(db) == []
    assert migrate(db) == []
    assert list(db["schema_migrations"].rows) == rows


def test_reopen_keeps_data_and_applies_nothing(tmp_path):
    db = open_state(tmp_path)
    db["alert_history"].insert({"kind": "host.ram", "key": "host", "severity": "warning", "message": "m",
                                "raised_at": 1.0})
    db.close()
    db = open_state(tmp_path)
    try:
        assert db["alert_history"].count == 1
        assert db["schema_migrations"].count == len(MIGRATIONS)
    finally:
        db.close()


def test_new_migrations_are_applied_in_order(db):
    seen = []
    a, b = NEWEST + 1, NEWEST + 2
    extra = [*MIGRATIONS, (a, "a", lambda d: seen.append(a)), (b, "b", lambda d: seen.append(b))]
    assert migrate(db, extra) == [a, b]
    assert seen == [a, b]
    assert schema_version(db) == b
    assert migrate(db, extra) == []
    assert seen == [a, b]


def test_schema_version_of_empty_database():
    assert schema_version(sqlite_utils.Database(memory=True)) == 0


def test_newer_schema_version_is_refused(tmp_path):
    db = open_state(tmp_path)
    db["schema_migrations"].insert({"version": 99, "name": "from the future", "applied_at": 0.0})
    db.close()
    with pytest.raises(StateError) as info:
        open_state(tmp_path)
    message = str(info.value)
    assert str(tmp_path / DB_NAME) in message
    assert f"schema version 99 is newer than this memwarden understands ({NEWEST})" in message


def test_corrupt_file_is_state_error_naming_path(tmp_path):
    path = tmp_path / DB_NAME
    path.write_bytes(random.Random(1234).randbytes(16384))
    with pytest.raises(StateError) as info:
        open_state(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "move it aside" in message


def test_state_dir_that_is_a_file_is_named_in_one_line(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(Unwritable) as info:
        open_state(blocker)
    assert str(info.value) == f"{blocker} is not a directory: move it aside, or set daemon.state_dir to a " \
                              "directory it may write"
    assert blocker.read_text() == "not a directory"


def test_failed_migration_is_rolled_back(tmp_path):
    # "each migration in its own transaction": a migration that fails half-way must leave nothing behind,
    # or the next start re-runs it and trips over its own leftovers.
    def half_done(db):
        db["leftover"].create({"id": int}, pk="id")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError, match="migration bug"):
        open_state(tmp_path, [*MIGRATIONS, (NEWEST + 1, "half done", half_done)])
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
    finally:
        conn.close()
    assert version == NEWEST
    assert "leftover" not in tables
    # and the fixed migration then applies cleanly on the next start
    fixed = (NEWEST + 1, "fixed", lambda d: d["leftover"].create({"id": int}, pk="id"))
    db = open_state(tmp_path, [*MIGRATIONS, fixed])
    try:
        assert schema_version(db) == NEWEST + 1
    finally:
        db.close()


def test_the_ollama_model_table_keeps_its_rows_when_renamed_models(tmp_path):
    before_rename = [m for m in MIGRATIONS if m[0] < 7]
    db = open_state(tmp_path, before_rename)
    db["adapters"].insert({"name": "llama3:latest", "pinned": 1, "size": 5, "size_measured": 1, "last_used": 2.0,
                           "hits": 3, "keep_alive": "600s"}, pk="name")
    db.close()
    db = open_state(tmp_path)
    try:
        assert "adapters" not in db.table_names()
        assert list(db["models"].rows) == [{"name": "llama3:latest", "pinned": 1, "size": 5, "size_measured": 1,
                                             "last_used": 2.0, "hits": 3, "keep_alive": "600s",
                                             "load_seconds": None, "visits": None, "visit_switch": None}]
        assert db["models"].pks == ["name"]
    finally:
        db.close()
