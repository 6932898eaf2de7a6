"""Alert history: one row per alert from raise to resolve."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import sqlite_utils

from memwarden.alerts.model import ActiveAlert, AlertEvent, Condition, EventType


class AlertHistory:
    def __init__(self, db: sqlite_utils.Database):
        self._db = db
        self._table = db["alert_history"]

    def _open_row_id(self, kind: str, key: str) -> int | None:
        row = self._db.execute(
            "SELECT id FROM alert_history WHERE kind = ? AND key = ? AND resolved_at IS NULL "
            "ORDER BY id DESC LIMIT 1", [kind, key]).fetchone()
        return row[0] if row else None

    def record(self, event: AlertEvent) -> None:
        c = event.alert.condition
        fields = json.dumps(dict(c.fields), default=str)
        row_id = self._open_row_id(c.kind, c.key)
        if event.type is EventType.RAISED or row_id is None:
            self._table.insert({
                "kind": c.kind, "key": c.key, "severity": c.severity, "message": c.message, "fields": fields,
                "raised_at": event.alert.raised_at, "last_event_at": event.at,
                "resolved_at": event.at if event.type is EventType.RESOLVED else None,
                "notify_count": event.alert.notify_count,
            })
            return
        update: dict[str, Any] = {"last_event_at": event.at, "notify_count": event.alert.notify_count}
        if event.type is EventType.RESOLVED:
            update["resolved_at"] = event.at
        else:
            update.update(severity=c.severity, message=c.message, fields=fields)
        self._table.update(row_id, update)

    def open_alerts(self) -> list[ActiveAlert]:
        """Alerts left open by a previous run, so a restart does not raise them a second time."""
        rows = self._db.query(
            "SELECT * FROM alert_history WHERE resolved_at IS NULL ORDER BY id")
        return [ActiveAlert(
            Condition(r["kind"], r["key"], r["severity"], r["message"],
                      MappingProxyType(json.loads(r["fields"] or "{}"))),
            raised_at=r["raised_at"], last_notified_at=r["last_event_at"] or r["raised_at"],
            notify_count=r["notify_count"] or 1) for r in rows]

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._db.query("SELECT * FROM alert_history ORDER BY raised_at DESC, id DESC LIMIT ?", [limit])
        return [{**r, "fields": json.loads(r["fields"] or "{}")} for r in rows]

    def prune(self, older_than: float) -> int:
        cursor = self._db.execute(
            "DELETE FROM alert_history WHERE resolved_at IS NOT NULL AND resolved_at < ?", [older_than])
        return cursor.rowcount
