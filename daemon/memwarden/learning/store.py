"""The memory store: memories in the state database (`memories` table), routed to adapters at insert.

A memory has a profile, a kind (conversation, inner_dialogue, reflection, dream, journal, observation, … any
string), content, an optional response, an importance 1–10, created_at, the adapter it feeds and, once a
promoted run has learned it, that run (`consolidated_run`, `consolidated_at`).

Routing, with profile isolation, is decided once, at insert (routing.py); a record is validated first
(records.py).

Imports are all or nothing: every line is validated first, every bad line is reported with its line number
(ImportRejected), and only a clean file is inserted, in one transaction. Over the control socket, whose
requests are limited to 1 MiB, an import is staged in chunks in a TEMP table of the daemon's connection
(begin_import / stage / commit_import / abort_import) and copied into `memories` in one transaction at
commit; a session with any bad line can only be aborted.

Updates: a memory with a cue (else a title) supersedes the older memories of its profile with the same cue
(learning/cues.py): `cue_key` holds the normalised cue, `superseded_by` the id of the newest memory with that key,
set in the transaction that inserts the newer one. A superseded memory is kept (and listed) but neither trained,
replayed nor counted towards a run being due.

Consolidation is final: mark_consolidated() only touches memories not yet consolidated, and a trigger in the
schema refuses to hand a consolidated memory to another run.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from memwarden.config.routes import Route
from memwarden.learning import import_ledger
from memwarden.learning.cues import supersession_key
from memwarden.learning.records import MAX_TEXT, BadRecord, ImportRejected, parse_line, validate_record
from memwarden.learning.routing import adapter_for

# Names callers import from the store: a record's rules and routing live beside it.
__all__ = ["COLUMNS", "MAX_REPORTED", "MAX_TEXT", "BadRecord", "ImportRejected", "ImportSessionError",
           "MemoryNotFound", "MemoryStore", "adapter_for", "parse_line", "validate_record"]

COLUMNS = ("profile", "kind", "content", "response", "importance", "created_at", "cue", "title", "tags", "prompt",
           "chosen", "rejected", "cue_key", "adapter")  # the adapter last: imports count rows by it
BATCH = 5000  # rows per executemany
MAX_REPORTED = 1000  # bad lines kept with their message per import session (the rest are counted)
IMPORT_IDLE_TIMEOUT = 600.0  # a staged import untouched this long is dropped
MAX_IMPORTS = 4  # import sessions staged at once

_INSERT = f"INSERT INTO memories ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_CUE_KEY = COLUMNS.index("cue_key")
_STAGED_COLUMNS = ", ".join(f"{c} {dict(importance='INTEGER', created_at='REAL').get(c, 'TEXT')}" for c in COLUMNS)
# Every memory of the touched (profile, cue_key) groups points at its group's newest memory, the newest at none.
_SUPERSEDE = """
    WITH touched(profile, cue_key) AS (
        SELECT DISTINCT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)),
    ranked(id, newest) AS (
        SELECT m.id, first_value(m.id) OVER (PARTITION BY m.profile, m.cue_key ORDER BY m.created_at DESC, m.id DESC)
        FROM memories m JOIN touched t ON m.profile = t.profile AND m.cue_key = t.cue_key)
    UPDATE memories SET superseded_by = nullif(ranked.newest, memories.id) FROM ranked
    WHERE ranked.id = memories.id AND memories.superseded_by IS NOT nullif(ranked.newest, memories.id)"""


class MemoryNotFound(KeyError):
    def __str__(self) -> str:
        return f"no memory with id {self.args[0]}"


class ImportSessionError(Exception):
    """An import session is unknown, expired, out of order or incomplete."""


# ---- the store -------------------------------------------------------------------------------------------

@dataclass
class _Session:
    token: str
    table: str
    started: float
    touched: float
    next_line: int = 1
    staged: int = 0
    bad_count: int = 0
    import_id: str | None = None
    errors: list[tuple[int, str]] = field(default_factory=list)
    by_adapter: Counter = field(default_factory=Counter)


class MemoryStore:
    def __init__(self, db: sqlite_utils.Database, routes: Sequence[Route] = (), clock=time.time):
        self.db = db
        self.clock = clock
        self._routes: tuple[Route, ...] = ()
        self._route_cache: dict[tuple[str, str], str] = {}
        self.routes = routes  # type: ignore[assignment]
        self._sessions: dict[str, _Session] = {}

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    @routes.setter
    def routes(self, routes: Sequence[Route]) -> None:
        """The validated config's routes (config.schema.routes checked every name)."""
        routes = tuple(routes)
        if routes != self._routes:
            self._routes = routes
            self._route_cache = {}

    def adapter_for(self, profile: str, kind: str) -> str:
        key = (profile, kind)
        adapter = self._route_cache.get(key)
        if adapter is None:
            adapter = self._route_cache[key] = adapter_for(profile, kind, self._routes)
        return adapter

    def _row(self, m: Mapping[str, Any]) -> tuple:
        return (m["profile"], m["kind"], m["content"], m["response"], m["importance"], m["created_at"],
                m.get("cue"), m.get("title"), json.dumps(m["tags"], ensure_ascii=False) if m.get("tags") else None,
                m.get("prompt"), m.get("chosen"), m.get("rejected"), supersession_key(m),
                self.adapter_for(m["profile"], m["kind"]))

    @staticmethod
    def _supersede(conn: sqlite3.Connection, groups: Iterable[tuple[str, str]]) -> int:
        """Mark the older memories of each (profile, cue_key) group superseded by its newest; returns how many
        rows changed. Call inside the transaction that inserted the group's new memories."""
        groups = sorted(set(groups))
        if not groups:
            return 0
        before = conn.total_changes  # a statement that opens with WITH reports no rowcount
        conn.execute(_SUPERSEDE, [json.dumps(groups)])
        return conn.total_changes - before

    # ---- ingest --------------------------------------------------------------------------------------

    def add(self, profile: str, kind: str, content: str | None, response: str | None = None, *, importance: int,
            created_at: float | str | None = None, **optional: Any) -> int:
        """Insert one memory (validated like an imported line; BadRecord otherwise): `optional` holds cue,
        title, tags and a preference's prompt, chosen and rejected. Returns its id."""
        record = {"profile": profile, "kind": kind, "content": content, "response": response,
                  "importance": importance, "created_at": created_at, **optional}
        clean = validate_record({k: v for k, v in record.items() if v is not None}, None, self.clock())
        row = self._row(clean)
        with self.db.atomic():
            cur = self.db.conn.execute(_INSERT, row)
            if row[_CUE_KEY] is not None:
                self._supersede(self.db.conn, [(row[0], row[_CUE_KEY])])
        return cur.lastrowid

    def import_lines(self, lines: Iterable[str | bytes], first_line: int = 1,
                     import_id: str | None = None) -> dict[str, Any]:
        """Validate every line, then insert them all in one transaction. Blank lines are skipped (and
        counted in the numbering). ImportRejected lists every bad line; nothing is inserted then. With an
        `import_id` already committed, nothing is imported again (import_ledger)."""
        if import_id is not None and (earlier := self.imported(import_id)) is not None:
            return import_ledger.already(import_id, earlier)
        now = self.clock()
        rows: list[tuple] = []
        errors: list[tuple[int, str]] = []
        for n, line in enumerate(lines, first_line):
            try:
                clean = parse_line(line, n, now)
            except BadRecord as exc:
                errors.append((n, exc.message))
                continue
            if clean is not None and not errors:
                rows.append(self._row(clean))
        if errors:
            raise ImportRejected(errors)
        result = {"imported": len(rows), "by_adapter": dict(Counter(r[-1] for r in rows))}
        with self.db.atomic():
            for i in range(0, len(rows), BATCH):
                self.db.conn.executemany(_INSERT, rows[i:i + BATCH])
            self._supersede(self.db.conn, ((r[0], r[_CUE_KEY]) for r in rows if r[_CUE_KEY] is not None))
            self._record(import_id, result)
        return result

    def imported(self, import_id: str) -> dict[str, Any] | None:
        """The committed import with this id (import_ledger.recorded), or None."""
        return import_ledger.recorded(self.db.conn, import_id)

    def _record(self, import_id: str | None, result: dict[str, Any]) -> None:
        if import_id is not None:
            import_ledger.record(self.db.conn, import_id, result, self.clock())
            result.update(import_id=import_id, already_imported=False)

    # ---- staged imports (the control socket's chunks) ---------------------------------------------------

    def _expire(self, now: float) -> None:
        for token in [t for t, s in self._sessions.items() if now - s.touched > IMPORT_IDLE_TIMEOUT]:
            self._drop(token)

    def _drop(self, token: str) -> None:
        session = self._sessions.pop(token, None)
        if session is not None:
            self.db.conn.execute(f"DROP TABLE IF EXISTS temp.{session.table}")

    def _session(self, token: Any) -> _Session:
        self._expire(self.clock())
        session = self._sessions.get(token) if isinstance(token, str) else None
        if session is None:
            raise ImportSessionError(f"no import in progress with token {token!r} (finished, aborted, or idle "
                                     f"for more than {IMPORT_IDLE_TIMEOUT:.0f}s)")
        session.touched = self.clock()
        return session

    def begin_import(self, import_id: str | None = None) -> str:
        """Start a staged import; returns its token. A session left by an earlier try of the same import id
        (never committed: its client went away) is dropped."""
        now = self.clock()
        self._expire(now)
        if import_id is not None:
            for token in [t for t, sess in self._sessions.items() if sess.import_id == import_id]:
                self._drop(token)
        if len(self._sessions) >= MAX_IMPORTS:
            raise ImportSessionError(f"{MAX_IMPORTS} imports are already in progress; try again later")
        token = secrets.token_hex(8)
        table = f"memory_import_{token}"
        self.db.conn.execute(f"CREATE TEMP TABLE {table} ({_STAGED_COLUMNS})")
        self._sessions[token] = _Session(token, table, now, now, import_id=import_id)
        return token

    def stage(self, token: str, lines: Sequence[str | None], first_line: int) -> dict[str, Any]:
        """Validate a chunk of lines (line numbers from `first_line`, which must follow the previous chunk)
        and stage the good ones. Returns this chunk's bad lines (within MAX_REPORTED per session)."""
        session = self._session(token)
        if first_line != session.next_line:
            raise ImportSessionError(f"chunk starts at line {first_line}, expected line {session.next_line}")
        now = self.clock()
        rows: list[tuple] = []
        bad: list[tuple[int, str]] = []
        for n, line in enumerate(lines, first_line):
            try:
                clean = parse_line(line, n, now)
            except BadRecord as exc:
                session.bad_count += 1
                if len(session.errors) < MAX_REPORTED:
                    session.errors.append((n, exc.message))
                    bad.append((n, exc.message))
                continue
            if clean is not None and not session.bad_count:
                rows.append(self._row(clean))
        session.next_line = first_line + len(lines)
        if session.bad_count:
            rows = []  # the import can only be aborted now: stop staging, keep validating
        if rows:
            insert = f"INSERT INTO temp.{session.table} VALUES ({', '.join('?' * len(COLUMNS))})"
            with self.db.atomic():
                self.db.conn.executemany(insert, rows)
            session.staged += len(rows)
            session.by_adapter.update(r[-1] for r in rows)
        return {"lines": len(lines), "staged": session.staged, "bad": bad, "bad_count": session.bad_count}

    def commit_import(self, token: str, total_lines: int | None = None) -> dict[str, Any]:
        """Insert everything staged in one transaction, or ImportRejected (the session is dropped either way).
        With `total_lines`, refuse unless exactly that many lines were staged (no chunk lost)."""
        session = self._session(token)
        try:
            if session.bad_count:
                raise ImportRejected(session.errors, session.bad_count)
            if total_lines is not None and session.next_line - 1 != total_lines:
                raise ImportSessionError(f"{session.next_line - 1} lines were sent, not {total_lines}; "
                                         f"nothing imported")
            cols = ", ".join(COLUMNS)
            result = {"imported": session.staged, "by_adapter": dict(session.by_adapter)}
            with self.db.atomic():
                if session.import_id is not None and (earlier := self.imported(session.import_id)) is not None:
                    return import_ledger.already(session.import_id, earlier)
                self.db.conn.execute(
                    f"INSERT INTO memories ({cols}) SELECT {cols} FROM temp.{session.table} ORDER BY rowid")
                self._supersede(self.db.conn, self.db.conn.execute(
                    f"SELECT DISTINCT profile, cue_key FROM temp.{session.table} WHERE cue_key IS NOT NULL"))
                self._record(session.import_id, result)
            return result
        finally:
            self._drop(token)

    def abort_import(self, token: str) -> dict[str, Any]:
        """Drop a staged import; nothing of it is imported."""
        session = self._session(token)
        self._drop(token)
        return {"aborted": True, "staged": session.staged, "bad_count": session.bad_count}

    # ---- reading ---------------------------------------------------------------------------------------

    @staticmethod
    def _where(profile: str | None = None, kind: str | None = None, adapter: str | None = None,
               consolidated: bool | None = None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for name, value in (("profile", profile), ("kind", kind), ("adapter", adapter)):
            if value is not None:
                clauses.append(f"{name} = ?")
                params.append(value)
        if consolidated is not None:
            clauses.append(f"consolidated_run IS {'NOT ' if consolidated else ''}NULL")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def rows(self, profile: str | None = None, kind: str | None = None, adapter: str | None = None,
             consolidated: bool | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Memories matching every filter given, newest first."""
        where, params = self._where(profile, kind, adapter, consolidated)
        return list(self.db.query(f"SELECT * FROM memories{where} ORDER BY created_at DESC, id DESC "
                                  f"LIMIT ? OFFSET ?", [*params, limit, offset]))

    def total(self, profile: str | None = None, kind: str | None = None, adapter: str | None = None,
              consolidated: bool | None = None) -> int:
        where, params = self._where(profile, kind, adapter, consolidated)
        return self.db.execute(f"SELECT COUNT(*) FROM memories{where}", params).fetchone()[0]

    def count(self, profile: str | None = None, kind: str | None = None,
              adapter: str | None = None) -> dict[str, Any]:
        """Totals and one group per (profile, adapter, kind): memories, unconsolidated ones (not superseded), their
        importance, and the superseded ones."""
        where, params = self._where(profile, kind, adapter)
        groups = [dict(r) for r in self.db.query(
            f"SELECT profile, adapter, kind, COUNT(*) AS memories, "
            f"SUM(consolidated_run IS NULL AND superseded_by IS NULL) AS unconsolidated, "
            f"COALESCE(SUM(CASE WHEN consolidated_run IS NULL AND superseded_by IS NULL THEN importance END), 0) "
            f"AS importance, SUM(superseded_by IS NOT NULL) AS superseded "
            f"FROM memories{where} GROUP BY profile, adapter, kind ORDER BY profile, adapter, kind", params)]
        return {
            "total": sum(g["memories"] for g in groups),
            "unconsolidated": sum(g["unconsolidated"] for g in groups),
            "superseded": sum(g["superseded"] for g in groups),
            "groups": groups,
        }

    def show(self, memory_id: int) -> dict[str, Any]:
        rows = list(self.db.query("SELECT * FROM memories WHERE id = ?", [memory_id]))
        if not rows:
            raise MemoryNotFound(memory_id)
        row = rows[0]
        row["tags"] = json.loads(row["tags"]) if row.get("tags") else None
        return row

    def unconsolidated_importance(self) -> dict[str, dict[str, Any]]:
        """adapter → {profile, importance, count} over its unconsolidated memories that no newer one supersedes
        (the trigger's input)."""
        return {r["adapter"]: {"profile": r["profile"], "importance": r["importance"], "count": r["count"]}
                for r in self.db.query(
                    "SELECT adapter, MIN(profile) AS profile, SUM(importance) AS importance, COUNT(*) AS count "
                    "FROM memories WHERE consolidated_run IS NULL AND superseded_by IS NULL "
                    "GROUP BY adapter ORDER BY adapter")}

    def adapters(self) -> dict[str, str]:
        """Every adapter with memories → its profile."""
        return {r["adapter"]: r["profile"] for r in self.db.query(
            "SELECT adapter, MIN(profile) AS profile FROM memories GROUP BY adapter ORDER BY adapter")}

    def mixed_adapters(self) -> dict[str, list[str]]:
        """Adapters fed by more than one profile: always empty (the isolation invariant, for checks)."""
        out: dict[str, list[str]] = {}
        for r in self.db.query("SELECT DISTINCT adapter, profile FROM memories ORDER BY adapter, profile"):
            out.setdefault(r["adapter"], []).append(r["profile"])
        return {a: ps for a, ps in out.items() if len(ps) > 1}

    def for_adapter(self, adapter: str, consolidated: bool) -> list[dict[str, Any]]:
        """Every memory of one adapter, new (unconsolidated) or learned before: the curator's input."""
        where, params = self._where(adapter=adapter, consolidated=consolidated)
        return list(self.db.query(f"SELECT * FROM memories{where} ORDER BY id", params))

    # ---- consolidation ---------------------------------------------------------------------------------

    def mark_consolidated(self, memory_ids: Iterable[int], run_id: str, at: float | None = None,
                          conn: sqlite3.Connection | sqlite_utils.Database | None = None) -> int:
        """Record that `run_id` consolidated these memories; those already consolidated keep their run.
        Returns how many were marked.

        With `conn` (the connection, or Database, whose transaction records the promoted run) it runs inside
        that transaction and neither begins nor commits; without, in a transaction of its own."""
        ids = sorted({int(i) for i in memory_ids})
        at = self.clock() if at is None else at
        if conn is None:
            with self.db.atomic():
                return self._mark(self.db.conn, ids, run_id, at)
        target = conn.conn if isinstance(conn, sqlite_utils.Database) else conn
        return self._mark(target, ids, run_id, at)

    @staticmethod
    def _mark(conn: sqlite3.Connection, ids: Sequence[int], run_id: str, at: float) -> int:
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run_id must be a non-empty string")
        marked = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            cur = conn.execute(
                f"UPDATE memories SET consolidated_run = ?, consolidated_at = ? "
                f"WHERE consolidated_run IS NULL AND id IN ({', '.join('?' * len(chunk))})", [run_id, at, *chunk])
            marked += cur.rowcount
        return marked
