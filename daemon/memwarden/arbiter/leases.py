"""Leases: VRAM promised to a holder, persisted so they survive a daemon restart."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlite_utils

from memwarden.policies.lease_procs import LeaseProcs

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
    holder_start: int | None = None  # the holder's start time (/proc/PID/stat): a reused pid is not the holder
    members: list[list[int]] = field(default_factory=list)  # [[pid, start]]: the lease's other processes
    groups: list[int] = field(default_factory=list)  # process groups led by one of them

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(4)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def procs(self) -> LeaseProcs | None:
        """The lease's processes as last seen; None for a lease with no holder process."""
        if not self.pid:
            return None
        return LeaseProcs(self.pid, self.holder_start, frozenset((p, s) for p, s in self.members),
                          frozenset(self.groups))

    def set_procs(self, procs: LeaseProcs) -> bool:
        """Record what was seen; True when it changed."""
        members = sorted([p, s] for p, s in procs.members)
        groups = sorted(procs.groups)
        if (members, groups) == (self.members, self.groups):
            return False
        self.members, self.groups = members, groups
        return True


def may_manage(lease: Lease, uid: int, daemon_uid: int) -> bool:
    """Only the lease's owner (the uid that acquired it), root, or the daemon's own uid may release or preempt
    it: membership of the admin group lets a user take leases, not end other users' leases."""
    return uid in (0, daemon_uid) or (lease.uid is not None and uid == lease.uid)


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
        row["members"] = json.dumps(lease.members)
        row["groups"] = json.dumps(lease.groups)
        self._table.upsert(row, pk="id")

    def _load(self, row: dict[str, Any]) -> Lease:
        row = dict(row)
        row["evicted"] = json.loads(row["evicted"] or "[]")
        row["restored"] = json.loads(row["restored"] or "[]")
        row["preemptible"] = bool(row["preemptible"])
        row["escalated"] = bool(row["escalated"])
        row["members"] = json.loads(row.get("members") or "[]")
        row["groups"] = json.loads(row.get("groups") or "[]")
        return Lease(**row)

    def active(self) -> list[Lease]:
        return [self._load(r) for r in self._db.query(
            "SELECT * FROM leases WHERE state IN ('active', 'preempting', 'evicting') ORDER BY granted_at")]

    def recent(self, limit: int = 20) -> list[Lease]:
        return [self._load(r) for r in self._db.query(
            "SELECT * FROM leases ORDER BY granted_at DESC LIMIT ?", [limit])]
