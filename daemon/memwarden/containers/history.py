"""Restart history in SQLite, so the budget and backoff survive a daemon restart."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from memwarden.policies.remediation import Restart

MANUAL = "manual restart"


class RestartHistory:
    def __init__(self, db: sqlite_utils.Database):
        self._db = db
        self._table = db["container_restarts"]

    def add(self, container: str, container_id: str, at: float, reason: str, before: int, dry_run: bool,
            error: str | None = None) -> int:
        return self._table.insert({
            "container": container, "container_id": container_id, "at": at, "reason": reason,
            "working_set_before": before, "dry_run": int(dry_run), "error": error}).last_pk

    def verify(self, row_id: int, after: int, effective: bool) -> None:
        self._table.update(row_id, {"working_set_after": after, "effective": int(effective)})

    def of(self, container: str, since: float, include_failed: bool = False) -> list[Restart]:
        """Restarts since `since`, oldest first. With include_failed, attempts that errored count too (as
        ineffective): a restart that keeps failing must spend the budget and back off like any other."""
        failed = "" if include_failed else " AND error IS NULL"
        # An operator's restart is theirs: it neither spends the automatic budget nor counts as ineffective.
        rows = self._db.query(
            f"SELECT * FROM container_restarts WHERE container = ? AND at >= ?{failed} "
            f"AND reason != '{MANUAL}' ORDER BY at", [container, since])
        return [Restart(r["at"], r["working_set_before"], r["working_set_after"],
                        False if r["error"] else (None if r["effective"] is None else bool(r["effective"])),
                        bool(r["dry_run"])) for r in rows]

    def counts(self, since: float) -> dict[str, tuple[int, int]]:
        """container → (restarts since `since`, restarts in all), dry-run and failed attempts included: what
        `containers` shows (Docker's own restart count stays 0 for a restart made through its API)."""
        return {r["container"]: (r["recent"], r["total"]) for r in self._db.query(
            "SELECT container, SUM(at >= ?) AS recent, COUNT(*) AS total FROM container_restarts "
            "GROUP BY container", [since])}

    def pending(self) -> list[dict[str, Any]]:
        return list(self._db.query(
            "SELECT * FROM container_restarts WHERE effective IS NULL AND error IS NULL AND dry_run = 0"))

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self._db.query("SELECT * FROM container_restarts ORDER BY at DESC LIMIT ?", [limit]))
