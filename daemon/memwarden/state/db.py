"""Open the state database, enable WAL and bring its schema up to date."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from memwarden.dirs import Unwritable, ensure_writable_dir, unwritable

DB_NAME = "memwarden.db"


class StateError(Exception):
    """The state database cannot be used; the message says which file and why."""


def _m1_alert_history(db: sqlite_utils.Database) -> None:
    db["alert_history"].create({
        "id": int, "kind": str, "key": str, "severity": str, "message": str, "fields": str,
        "raised_at": float, "last_event_at": float, "resolved_at": float, "notify_count": int,
    }, pk="id", not_null={"kind", "key", "severity", "message", "raised_at"})
    db["alert_history"].create_index(["kind", "key", "resolved_at"])
    db["alert_history"].create_index(["raised_at"])


def _m2_leases(db: sqlite_utils.Database) -> None:
    db["leases"].create({
        "id": str, "holder": str, "pid": int, "uid": int, "gpu": int, "size": int, "priority": int,
        "preemptible": int, "state": str, "granted_at": float, "released_at": float, "release_reason": str,
        "evicted": str, "escalated": int, "restored": str, "downtime_s": float,
    }, pk="id", not_null={"holder", "gpu", "size", "state", "granted_at"})
    db["leases"].create_index(["state"])
    db["adapters"].create({
        "name": str, "pinned": int, "size": int, "size_measured": int, "last_used": float, "hits": int,
        "keep_alive": str,
    }, pk="name")


def _m3_restarts(db: sqlite_utils.Database) -> None:
    db["container_restarts"].create({
        "id": int, "container": str, "container_id": str, "at": float, "reason": str,
        "working_set_before": int, "working_set_after": int, "effective": int, "dry_run": int, "error": str,
    }, pk="id", not_null={"container", "at", "reason"})
    db["container_restarts"].create_index(["container", "at"])


def _m4_memories_runs(db: sqlite_utils.Database) -> None:
    # Raw SQL for what sqlite-utils cannot declare: AUTOINCREMENT (a memory id, once recorded in a run's
    # memory_ids, is never reused), the importance CHECK, and the trigger that makes consolidation final.
    db.execute("""
        CREATE TABLE memories (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            profile TEXT NOT NULL,
            kind TEXT NOT NULL,
            content TEXT NOT NULL,
            response TEXT,
            importance INTEGER NOT NULL CHECK (importance BETWEEN 1 AND 10),
            created_at REAL NOT NULL,
            adapter TEXT NOT NULL,
            consolidated_run TEXT,
            consolidated_at REAL
        )""")
    db.execute("CREATE INDEX idx_memories_adapter_consolidated_run ON memories (adapter, consolidated_run)")
    db.execute("CREATE INDEX idx_memories_profile ON memories (profile)")
    # A memory consolidated by one run can never be claimed by another (it may only be set back to NULL).
    db.execute("""
        CREATE TRIGGER memories_consolidated_once BEFORE UPDATE OF consolidated_run ON memories
        WHEN OLD.consolidated_run IS NOT NULL AND NEW.consolidated_run IS NOT NULL
             AND NEW.consolidated_run != OLD.consolidated_run
        BEGIN SELECT RAISE(ABORT, 'memory already consolidated by another run'); END""")
    db["runs"].create({
        "id": str, "adapter": str, "profile": str, "state": str, "trigger": str, "created_at": float,
        "started_at": float, "finished_at": float, "method": str, "memory_ids": str, "spec_path": str,
        "output_dir": str, "eval": str, "promoted": int, "reason": str, "version": int, "error": str,
    }, pk="id", not_null={"adapter", "profile", "state", "created_at"}, defaults={"promoted": 0})
    db["runs"].create_index(["adapter", "created_at"])
    db["runs"].create_index(["state"])
    db["adapter_versions"].create({
        "adapter": str, "version": int, "run_id": str, "path": str, "created_at": float, "active": int,
        "ollama_model": str,
    }, pk=("adapter", "version"), not_null={"path", "created_at"}, defaults={"active": 0})


def _m5_lease_processes(db: sqlite_utils.Database) -> None:
    # A lease lasts while any of its processes runs; they are kept so that a restart still knows them.
    db["leases"].add_column("holder_start", int)
    db["leases"].add_column("members", str)
    db["leases"].add_column("groups", str)


def _m6_memory_imports(db: sqlite_utils.Database) -> None:
    # An import's id, chosen by its client, committed in the transaction that inserts its memories: the retry
    # of an import whose answer was lost finds it here instead of importing everything again.
    db.execute("""
        CREATE TABLE memory_imports (
            import_id TEXT PRIMARY KEY,
            imported INTEGER NOT NULL,
            by_adapter TEXT NOT NULL,
            committed_at REAL NOT NULL
        )""")
    # memories.list pages newest first: walking this index, it never sorts (or reads) the whole table.
    db.execute("CREATE INDEX idx_memories_created ON memories (created_at, id)")


def _m7_models_table(db: sqlite_utils.Database) -> None:
    # The table holds Ollama models (the scheduler's record, arbiter/model_table.py); "adapters" means LoRA
    # adapters only, and those live in adapter_versions.
    db.execute("ALTER TABLE adapters RENAME TO models")


def _m8_leak_history(db: sqlite_utils.Database) -> None:
    # A container's leak history (containers/leak_store.py): one row per container, one per scale of it.
    db["leak_series"].create({
        "container": str, "container_id": str, "settings": str, "first": float, "last_t": float, "last_ws": int,
        "count": int, "step": int, "steps": str, "verdict": str, "saved_at": float,
    }, pk="container", not_null={"container_id", "settings", "count", "steps", "saved_at"})
    db["leak_scales"].create({
        "container": str, "scale": float, "idx": int, "buckets": str, "coarse": str, "past": str, "reading": str,
        "stale": int,
    }, pk=("container", "scale"), not_null={"idx", "buckets", "past", "stale"})


# Append only: a migration, once released, never changes; the next one fixes what it got wrong.
def _m9_run_placement(db: sqlite_utils.Database) -> None:
    # Which executor ran a run and, on a cluster, on which node: `train history` shows both.
    db["runs"].add_column("executor", str)
    db["runs"].add_column("node", str)


def _m10_memory_cues(db: sqlite_utils.Database) -> None:
    # A memory's cue, title and tags (what its prompts ask about), a preference's prompt and replies, and
    # updates: cue_key is the normalised cue (else title) an update is found by, superseded_by the newer memory
    # that replaced this one (learning/cues.py).
    for name in ("cue", "title", "tags", "prompt", "chosen", "rejected", "cue_key"):
        db.execute(f"ALTER TABLE memories ADD COLUMN {name} TEXT")
    db.execute("ALTER TABLE memories ADD COLUMN superseded_by INTEGER")
    db.execute("CREATE INDEX idx_memories_cue_key ON memories (profile, cue_key) WHERE cue_key IS NOT NULL")


def _m11_model_demand(db: sqlite_utils.Database) -> None:
    # What the eviction policy learned of each model (arbiter/model_table.py): its measured load time, and its
    # decayed switch count with the switch number it was counted at, so that a restart keeps both.
    db["models"].add_column("load_seconds", float)
    db["models"].add_column("visits", float)
    db["models"].add_column("visit_switch", int)


def _m12_leak_shapes(db: sqlite_utils.Database) -> None:
    # A leak history's latest drops and its young series' fit (policies/leak_shapes.py), JSON arrays.
    db["leak_series"].add_column("drops", str)
    db["leak_series"].add_column("young", str)


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "alert history", _m1_alert_history),
    (2, "leases and adapters", _m2_leases),
    (3, "container restarts", _m3_restarts),
    (4, "memories, runs and adapter versions", _m4_memories_runs),
    (5, "lease processes", _m5_lease_processes),
    (6, "memory import ids and the listing index", _m6_memory_imports),
    (7, "the Ollama model table is named models", _m7_models_table),
    (8, "leak history per container and scale", _m8_leak_history),
    (9, "where a training run ran", _m9_run_placement),
    (10, "memory cues, preferences and updates", _m10_memory_cues),
    (11, "what the eviction policy learned of each model", _m11_model_demand),
    (12, "leak history: drops and the young fit", _m12_leak_shapes),
]


def schema_version(db: sqlite_utils.Database) -> int:
    if "schema_migrations" not in db.table_names():
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return row[0] or 0


def migrate(db: sqlite_utils.Database, migrations=MIGRATIONS) -> list[int]:
    """Apply what is missing, each migration in its own transaction. Returns the versions applied."""
    if "schema_migrations" not in db.table_names():
        db["schema_migrations"].create({"version": int, "name": str, "applied_at": float}, pk="version")
    current = schema_version(db)
    newest = max(v for v, _, _ in migrations)
    if current > newest:
        raise StateError(
            f"{db.conn.execute('PRAGMA database_list').fetchone()[2]}: schema version {current} is newer "
            f"than this memwarden understands ({newest}); refusing to touch it")
    applied = []
    for version, name, apply in migrations:
        if version <= current:
            continue
        with db.atomic():
            apply(db)
            db["schema_migrations"].insert({"version": version, "name": name, "applied_at": time.time()})
        applied.append(version)
    return applied


HINT = "set daemon.state_dir to a directory it may write"

# Primary result codes (sqlite3.h) of a file SQLite may not create or write.
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN = 3, 8, 14


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the state file as the daemon uses it: WAL, a 5 s busy timeout, foreign keys on."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _check_writable(path: Path) -> None:
    """The state directory and the files SQLite will write in it, before SQLite meets them: a permission or a
    read-only filesystem is then one line naming the directory or file (memwarden.dirs.Unwritable)."""
    ensure_writable_dir(path.parent, HINT)
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            os.close(os.open(name, os.O_RDWR | os.O_CLOEXEC))  # no SQLite connection yet: no lock to drop
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise unwritable(name, exc, HINT) from None


def open_state(state_dir: Path, migrations=MIGRATIONS) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the state database.

    Unwritable (memwarden.dirs) when the directory or file may not be written; StateError when the file is
    not a usable state database."""
    path = state_dir / DB_NAME
    _check_writable(path)
    try:
        db = sqlite_utils.Database(connect(path))
        migrate(db, migrations)
    except sqlite3.DatabaseError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN):
            raise Unwritable(f"{path}: {exc}: make {state_dir} and the files in it writable for uid "
                             f"{os.geteuid()}, or {HINT}") from None
        raise StateError(f"{path}: {exc} (is it a memwarden state database? move it aside to start fresh)") \
            from None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror or exc}") from None
    return db
