"""RunStore: the one owner of the `runs` table — every read and write of a training run's row is here.

A run is created `queued` and moves through curating → waiting/running → preempted/interrupted (resumable) to
one of the FINAL states. A run is *active* until it has a finished_at: the trigger never starts a second run of
an adapter that has one. What is due (trigger.py) is computed here once, for the supervisor's tick and for the
`learning.due` RPC alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from memwarden.learning import trigger

STATES = ("queued", "curating", "waiting", "running", "preempted", "interrupted", "promoted", "rejected",
          "failed", "cancelled")
RESUMABLE = ("queued", "curating", "waiting", "running", "preempted", "interrupted")
FINAL = ("promoted", "rejected", "failed", "cancelled")
PENDING = ("queued", "waiting", "preempted", "interrupted")  # waiting for the supervisor to (re)launch them
IN_PROGRESS = ("running", "curating")  # a daemon that stops leaves its run in one of these


class RunStore:
    def __init__(self, db: Any):
        self.db = db

    def insert(self, run_id: str, adapter: str, profile: str, trigger_name: str, created_at: float,
               method: str) -> None:
        self.db["runs"].insert({"id": run_id, "adapter": adapter, "profile": profile, "state": "queued",
                                "trigger": trigger_name, "created_at": created_at, "method": method,
                                "promoted": 0})

    def update(self, run_id: str, **fields: Any) -> None:
        self.db["runs"].update(run_id, fields)

    def set_state(self, run_id: str, state: str, **fields: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}")
        self.update(run_id, state=state, **fields)

    def get(self, run_id: str) -> dict[str, Any]:
        """The run's row as stored (eval and memory_ids as their JSON text)."""
        return self.db["runs"].get(run_id)

    def state(self, run_id: str) -> str:
        return self.get(run_id)["state"]

    def memory_ids(self, run_id: str) -> list[int]:
        """The memories the run learns: consolidated by it if it is promoted."""
        return json.loads(self.get(run_id)["memory_ids"] or "[]")

    def history(self, limit: int = 20, adapter: str | None = None) -> list[dict[str, Any]]:
        """Newest first; `eval` decoded, `memory_ids` as their count."""
        where, params = ("WHERE adapter = ?", [adapter]) if adapter else ("", [])
        rows = list(self.db.query(f"SELECT * FROM runs {where} ORDER BY created_at DESC LIMIT ?", [*params, limit]))
        for r in rows:
            r["eval"] = json.loads(r["eval"]) if r["eval"] else None
            r["memory_ids"] = len(json.loads(r["memory_ids"])) if r["memory_ids"] else 0
        return rows

    def recall(self, run_id: str | None) -> dict[str, Any]:
        """The recall fields of a finished run's evaluation (eval_report.EvalReport.recall_fields), its
        general-probe losses and its DPO stage's figures (eval_report.Preference.flat), {} if none."""
        rows = list(self.db.query("SELECT eval FROM runs WHERE id = ?", [run_id])) if run_id else []
        ev = json.loads(rows[0]["eval"]) if rows and rows[0]["eval"] else {}
        return {k: v for k, v in ev.items() if k.startswith(("recall", "probe_recall", "general_loss",
                                                                   "preference_", "dpo_"))}

    def pending(self, limit: int | None = None) -> list[str]:
        """Runs to (re)launch, oldest first."""
        marks = ", ".join("?" * len(PENDING))
        tail, params = (" LIMIT ?", [limit]) if limit is not None else ("", [])
        return [r["id"] for r in self.db.query(
            f"SELECT id FROM runs WHERE state IN ({marks}) ORDER BY created_at{tail}", [*PENDING, *params])]

    def interrupt_in_progress(self) -> list[str]:
        """At start: a run left running or curating by a daemon that died becomes `interrupted`, to resume from
        its checkpoint. The runs it touched."""
        marks = ", ".join("?" * len(IN_PROGRESS))
        ids = [r["id"] for r in self.db.query(f"SELECT id FROM runs WHERE state IN ({marks})", list(IN_PROGRESS))]
        for run_id in ids:
            self.set_state(run_id, "interrupted")
        return ids

    def count_by_state(self) -> dict[str, int]:
        """Every state, at 0 when no run is in it."""
        counts = dict.fromkeys(STATES, 0)
        for row in self.db.query("SELECT state, COUNT(*) AS n FROM runs GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    def last_run_times(self) -> dict[str, float]:
        """adapter → when its most recent run started (or was created, if it never started)."""
        return {r["adapter"]: r["t"] for r in self.db.query(
            "SELECT adapter, MAX(COALESCE(started_at, created_at)) AS t FROM runs GROUP BY adapter")}

    def active_adapters(self) -> set[str]:
        """Adapters with a run queued, waiting, preempted or in progress: any run not finished."""
        return {r["adapter"] for r in self.db.query("SELECT DISTINCT adapter FROM runs WHERE finished_at IS NULL")}

    def due_report(self, now: float, importance: Mapping[str, float], config: trigger.TriggerConfig,
                   known: Iterable[str] = ()) -> list[trigger.Decision]:
        """One trigger decision per adapter with unconsolidated `importance`, a run not finished, or in `known`
        (adapters with no importance left count 0), sorted by adapter."""
        sums = dict.fromkeys(known, 0.0) | {a: float(v) for a, v in importance.items()}
        return trigger.due_adapters(sums, self.last_run_times(), self.active_adapters(), config, now)
