"""VersionStore: the one owner of the `adapter_versions` table — an adapter's promoted versions.

At most one version of an adapter is active: promote() and rollback() switch it inside one transaction. The
promotion's transaction is the caller's (the run's row and the consolidated memories commit with it), so
promote() runs inside whatever transaction is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COLUMNS = ("adapter", "version", "run_id", "active", "ollama_model", "created_at")


@dataclass(frozen=True)
class Version:
    adapter: str
    version: int
    run_id: str | None
    path: str
    created_at: float
    active: bool
    ollama_model: str | None

    @staticmethod
    def of(row: dict[str, Any]) -> Version:
        return Version(row["adapter"], row["version"], row["run_id"], row["path"], row["created_at"],
                       bool(row["active"]), row["ollama_model"])


class VersionStore:
    def __init__(self, db: Any):
        self.db = db

    def listing(self) -> list[dict[str, Any]]:
        """Every version of every adapter, by adapter and version (the `train.status` reply's rows)."""
        return list(self.db.query(f"SELECT {', '.join(COLUMNS)} FROM adapter_versions ORDER BY adapter, version"))

    def of(self, adapter: str) -> list[Version]:
        """An adapter's versions, oldest first."""
        return [Version.of(r) for r in self.db.query(
            "SELECT * FROM adapter_versions WHERE adapter = ? ORDER BY version", [adapter])]

    def active(self, adapter: str) -> Version | None:
        rows = list(self.db.query("SELECT * FROM adapter_versions WHERE adapter = ? AND active = 1", [adapter]))
        return Version.of(rows[0]) if rows else None

    def previous(self, adapter: str, version: int) -> Version | None:
        """The newest version older than `version`."""
        rows = list(self.db.query("SELECT * FROM adapter_versions WHERE adapter = ? AND version < ? "
                                  "ORDER BY version DESC LIMIT 1", [adapter, version]))
        return Version.of(rows[0]) if rows else None

    def next_number(self, adapter: str) -> int:
        return 1 + self.db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM adapter_versions WHERE adapter = ?", [adapter]).fetchone()[0]

    def promote(self, adapter: str, version: int, run_id: str, path: str, now: float) -> None:
        """Record `version` as the adapter's active one (inside the caller's transaction)."""
        self.db.execute("UPDATE adapter_versions SET active = 0 WHERE adapter = ?", [adapter])
        self.db["adapter_versions"].insert({"adapter": adapter, "version": version, "run_id": run_id,
                                            "path": path, "created_at": now, "active": 1})

    def activate(self, adapter: str, version: int) -> None:
        with self.db.atomic():
            self.db.execute("UPDATE adapter_versions SET active = 0 WHERE adapter = ?", [adapter])
            self.db.execute("UPDATE adapter_versions SET active = 1 WHERE adapter = ? AND version = ?",
                            [adapter, version])

    def set_ollama_model(self, adapter: str, version: int, model: str) -> None:
        self.db.execute("UPDATE adapter_versions SET ollama_model = ? WHERE adapter = ? AND version = ?",
                        [model, adapter, version])

    def beyond_keep(self, adapter: str, keep: int) -> list[Version]:
        """Inactive versions past the newest `keep - 1` inactive ones: `keep` versions stay, the active one
        among them."""
        return [Version.of(r) for r in self.db.query(
            "SELECT * FROM adapter_versions WHERE adapter = ? AND active = 0 ORDER BY version DESC "
            "LIMIT -1 OFFSET ?", [adapter, max(0, keep - 1)])]

    def delete(self, adapter: str, version: int) -> None:
        self.db.execute("DELETE FROM adapter_versions WHERE adapter = ? AND version = ?", [adapter, version])
