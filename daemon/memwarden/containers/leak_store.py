"""Leak history in SQLite, so a daemon restart or upgrade loses no evidence of a leak.

Owner of the tables `leak_series` (one row per container: its settings, first and last sample, jitter, the
latest drops and the young series' fit, the previous verdict for hysteresis) and `leak_scales` (one row per
container and scale: its buckets — min, max, last per bucket — and the retained past's maxima). A row holds
what policies/leak_scales.HistoryState holds, so a history loaded from it judges the next sample exactly as the
one saved would have. Its size is bounded whatever the span (a fixed number of buckets and past points per
scale, at most DROPS_KEPT drops); rows go with their container.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

import sqlite_utils

from memwarden.policies import leak_scales
from memwarden.policies.leak import LeakVerdict, Sample
from memwarden.policies.leak_scales import HistoryState, LeakHistory, LeakSettings, ScaleReading, ScaleState


class BadLeakRow(ValueError):
    """A stored leak history that cannot be read back; the message names the container."""


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _settings(s: LeakSettings) -> str:
    # With the policy's own shape: a history kept by a daemon whose policy cut buckets otherwise (an upgrade
    # that changed BUCKETS or PAST_POINTS) cannot be resumed exactly, so it starts over.
    return _dump({"scales": list(s.scales), "min_rate": s.min_rate, "buckets": leak_scales.BUCKETS,
                  "past_points": leak_scales.PAST_POINTS})


class LeakStore:
    def __init__(self, db: sqlite_utils.Database):
        self._db = db
        self._series = db["leak_series"]
        self._scales = db["leak_scales"]

    def save(self, container: str, container_id: str, history: LeakHistory, verdict: LeakVerdict | None,
             at: float) -> None:
        """The container's whole history, in one transaction (a few kB: bounded whatever its span)."""
        state = history.state()
        series = {
            "container": container, "container_id": container_id, "settings": _settings(state.settings),
            "first": state.first, "last_t": None if state.last is None else state.last.t,
            "last_ws": None if state.last is None else state.last.working_set, "count": state.count,
            "step": state.step, "steps": _dump(state.steps), "drops": _dump(state.drops), "young": _dump(state.young),
            "verdict": None if verdict is None else _dump(dataclasses.asdict(verdict)), "saved_at": at}
        scales = [{
            "container": container, "scale": s.scale, "idx": s.index, "buckets": _dump(s.buckets),
            "coarse": None if s.coarse is None else _dump(s.coarse), "past": _dump(s.past),
            "reading": None if s.reading is None else _dump(dataclasses.astuple(s.reading)),
            "stale": int(s.stale)} for s in state.scales]
        with self._db.atomic():
            self._db.execute("DELETE FROM leak_scales WHERE container = ?", [container])
            self._series.insert(series, replace=True)
            self._scales.insert_all(scales)

    def load(self, container: str, container_id: str,
             settings: LeakSettings) -> tuple[LeakHistory, LeakVerdict | None] | None:
        """The saved history of this very container (same id) under these settings, or None: a recreated
        container, or settings changed since (containers.leak_window, leak_min_rate), start over. BadLeakRow
        when the rows cannot be read back."""
        rows = list(self._db.query("SELECT * FROM leak_series WHERE container = ?", [container]))
        if not rows or rows[0]["container_id"] != container_id or rows[0]["settings"] != _settings(settings):
            return None
        r = rows[0]
        try:
            scales = tuple(ScaleState(
                s["scale"], s["idx"], tuple(tuple(b) for b in json.loads(s["buckets"])),
                None if s["coarse"] is None else tuple(json.loads(s["coarse"])),
                tuple(tuple(p) for p in json.loads(s["past"])),
                None if s["reading"] is None else ScaleReading(*json.loads(s["reading"])), bool(s["stale"]))
                for s in self._db.query("SELECT * FROM leak_scales WHERE container = ? ORDER BY scale",
                                        [container]))
            last = None if r["last_t"] is None else Sample(r["last_t"], r["last_ws"])
            # A row saved before drops and the young fit were kept (schema 12) resumes without them.
            state = HistoryState(settings, r["first"], last, r["count"], r["step"],
                                 tuple(json.loads(r["steps"])), scales,
                                 tuple(tuple(d) for d in json.loads(r["drops"] or "[]")),
                                 tuple(json.loads(r["young"] or "[]")))
            verdict = None if r["verdict"] is None else LeakVerdict(**json.loads(r["verdict"]))
            return LeakHistory.from_state(state), verdict
        except (ValueError, TypeError, KeyError) as exc:
            raise BadLeakRow(f"leak history of container {container}: {exc}") from None

    def remove(self, container: str) -> None:
        with self._db.atomic():
            self._db.execute("DELETE FROM leak_scales WHERE container = ?", [container])
            self._db.execute("DELETE FROM leak_series WHERE container = ?", [container])

    def keep_only(self, containers: Iterable[str]) -> list[str]:
        """Remove the history of every container not named; returns those removed."""
        keep = set(containers)
        gone = sorted({r["container"] for r in self._db.query(
            "SELECT container FROM leak_series UNION SELECT container FROM leak_scales")} - keep)
        for name in gone:
            self.remove(name)
        return gone

    def containers(self) -> list[str]:
        return [r["container"] for r in self._db.query("SELECT container FROM leak_series ORDER BY container")]

    def size(self, container: str) -> int:
        """Bytes of the container's rows as stored values: 8 per number, the UTF-8 length of each text."""
        def row_bytes(row: dict[str, Any]) -> int:
            return sum(len(v.encode()) if isinstance(v, str) else 8 for v in row.values() if v is not None)
        return sum(row_bytes(r) for table in ("leak_series", "leak_scales")
                   for r in self._db.query(f"SELECT * FROM {table} WHERE container = ?", [container]))
