"""The record of committed imports (`memory_imports`): each import's client-chosen id, how many memories it
brought and to which adapters.

A row is written in the transaction that inserts the import's memories, so an id is recorded exactly when its
memories are. A client that lost the answer to its commit (the daemon committed, then the connection dropped)
retries with the same id and is told "already imported" instead of importing everything twice.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

IMPORT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_id(value: Any) -> str:
    """The import id, or ValueError saying what one must look like."""
    if not isinstance(value, str) or not IMPORT_ID_RE.match(value):
        raise ValueError(f"'import_id' must be 1–128 letters, digits, '_', '.', ':' or '-', starting with a letter "
                         f"or digit, got {str(value)[:40]!r}")
    return value


def recorded(conn: sqlite3.Connection, import_id: str) -> dict[str, Any] | None:
    """What the import with this id brought, if it was committed: {imported, by_adapter, committed_at}."""
    row = conn.execute("SELECT imported, by_adapter, committed_at FROM memory_imports WHERE import_id = ?",
                       [import_id]).fetchone()
    if row is None:
        return None
    return {"imported": row[0], "by_adapter": json.loads(row[1]), "committed_at": row[2]}


def record(conn: sqlite3.Connection, import_id: str, result: dict[str, Any], at: float) -> None:
    """Record a committed import; call inside the transaction that inserts its memories."""
    conn.execute("INSERT INTO memory_imports (import_id, imported, by_adapter, committed_at) VALUES (?, ?, ?, ?)",
                 [import_id, result["imported"], json.dumps(result["by_adapter"], sort_keys=True), at])


def already(import_id: str, earlier: dict[str, Any]) -> dict[str, Any]:
    """The answer to a retry of a committed import: nothing imported now."""
    return {"imported": earlier["imported"], "by_adapter": earlier["by_adapter"], "import_id": import_id,
            "already_imported": True, "committed_at": earlier["committed_at"]}
