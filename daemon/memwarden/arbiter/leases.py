"""Leases: VRAM promised to a holder, persisted so they survive a daemon restart."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlite_utils

# "evicting": granted in principle, models being unloaded; a restart finds it and rolls it back.
ACTIVE_STATES = ("active", "preempting", "evicting")


@dataclass
class Lease:
    id: str
    holder: str
    pid: int | None
    uid: int | None
    gpu: int
    size: int
    priority: int
    preemptible: bool
    state: str  # evicting | active | preempting | released
    granted_at: float
    evicted: list[dict[str, Any]] = field(default_factory=list)  # [{name, keep_alive, size_vram, evicted_at}]
    escalated: bool = False  # Ollama's service was stopped for this lease
    released_at: float | None = None
    release_reason: str | None = None
    restored: list[dict[str, Any]] = field(default_factory=list)  # [{name, ok, restored_at, downtime_s, error}]
    downtime_s: float | None = None

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(4)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LeaseStore:
    def __init__(self, db: sqlite_utils.Database):
        self._table = db["leases"]
        self._db = db

    def save(self, lease: Lease) -> None:
        row = asdict(lease)
        row["evicted"] = json.dumps(lease.evicted)
        row["restored"] = json.dumps(lease.restored)
        row["preemptible"] = int(lease.preemptible)
        row["escalated"] = int(lease.escalated)
        self._table.upsert(row, pk="id")

    def _load(self, row: dict[str, Any]) -> Lease:
        row = dict(row)
        row["evicted"] = json.loads(row["evicted"] or "[]")
        row["restored"] = json.loads(row["restored"] or "[]")
        row["preemptible"] = bool(row["preemptible"])
        row["escalated"] = bool(row["escalated"])
        return Lease(**row)

    def active(self) -> list[Lease]:
        return [self._load(r) for r in self._db.query(
            "SELECT * FROM leases WHERE state IN ('active', 'preempting', 'evicting') ORDER BY granted_at")]

    def recent(self, limit: int = 20) -> list[Lease]:
        return [self._load(r) for r in self._db.query(
            "SELECT * FROM leases ORDER BY granted_at DESC LIMIT ?", [limit])]
