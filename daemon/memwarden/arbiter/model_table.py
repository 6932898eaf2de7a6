"""The `models` table: the scheduler's record of each Ollama model (its size, use, pin and keep_alive, and what
the eviction policy learned of it: its load time and its decayed count of switches).

ModelTable is the only code that reads or writes it. ("Adapters" are LoRA adapters, learning/'s business; the
table had that name until schema version 7, state/db.py.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from memwarden.logs import get_logger
from memwarden.ollama.client import keep_alive_text
from memwarden.policies import cache

log = get_logger()

TABLE = "models"
DELETE_BATCH = 500  # SQLite's bound-parameter limit, with room to spare


def _finite(value: object) -> float:
    """A stored learned figure, or 0 (not learned) for none or one that is not a finite non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(value)


def switch_clock(entries: Iterable[cache.Entry]) -> int:
    """The switch count a restarted scheduler resumes from: the latest any stored model was counted at, so the
    stored counts decay on from where they were left."""
    return max((e.visit_switch for e in entries), default=0)


class ModelTable:
    def __init__(self, db: Any):
        self.table = db[TABLE]

    def load(self) -> tuple[list[cache.Entry], dict[str, str]]:
        """The stored entries, and their keep_alives that still parse (one that does not is dropped, logged)."""
        entries, keep_alive = [], {}
        for row in self.table.rows:
            # demand's short and restarted counts are not stored: the short one relearns within tens of switches,
            # and until a change of law is seen again the restarted one is the count itself.
            visits = _finite(row.get("visits"))
            entries.append(cache.Entry(row["name"], row["size"] or 0, bool(row["size_measured"]), False,
                                       bool(row["pinned"]), row["last_used"] or 0.0, row["hits"] or 0,
                                       load_seconds=_finite(row.get("load_seconds")), visits=visits,
                                       visit_switch=row.get("visit_switch") or 0, visits_restarted=visits))
            if row["keep_alive"] is not None:
                try:
                    keep_alive[row["name"]] = keep_alive_text(row["keep_alive"])
                except ValueError as exc:
                    log.warning("stored keep_alive ignored: it does not parse", model=row["name"],
                                keep_alive=str(row["keep_alive"])[:64], error=str(exc)[:200])
        return entries, keep_alive

    def save(self, entry: cache.Entry, keep_alive: str | None) -> None:
        self.table.upsert({"name": entry.name, "pinned": int(entry.pinned), "size": entry.size,
                           "size_measured": int(entry.size_measured), "last_used": entry.last_used,
                           "hits": entry.hits, "keep_alive": keep_alive, "load_seconds": entry.load_seconds,
                           "visits": entry.visits, "visit_switch": entry.visit_switch}, pk="name")

    def delete(self, names: Iterable[str]) -> None:
        batch = list(names)
        for i in range(0, len(batch), DELETE_BATCH):
            part = batch[i:i + DELETE_BATCH]
            self.table.delete_where(f"name IN ({', '.join('?' * len(part))})", part)

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every stored row by model name (for checks and tests; the scheduler works from memory)."""
        return {row["name"]: row for row in self.table.rows}
