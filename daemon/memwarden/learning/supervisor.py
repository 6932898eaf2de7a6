"""The learning supervisor: from due memories to a promoted, exported adapter version — the facade.

One run at a time, its state in the `runs` table (runs.py) so that a daemon restart resumes it. The parts:
- scheduling.py: when a run starts (pending runs, the trigger, the window);
- execution.py: one run's state machine (curate, lease, dry run, run, preempt, resume, fail), the trainer
  behind an executor (executor.py: a child process; systemd_executor.py: a unit of its own; executor_choice.py
  picks one by learning.executor);
- gpu_wait.py: what a run refused its lease does (wait, blocked and alerted, or the CPU within the RAM reserve);
- publisher.py: judge, promote (one transaction), export to Ollama, prune, roll back;
- runs.py and versions.py: the one owner of each table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memwarden.alerts.model import Condition
from memwarden.config.schema import Config
from memwarden.learning import health, trigger
from memwarden.learning.execution import RunExecution
from memwarden.learning.executor import Executor, SubprocessExecutor
from memwarden.learning.leasing import TrainingLeases
from memwarden.learning.progress import CurrentRun
from memwarden.learning.publisher import Publisher, ollama_name
from memwarden.learning.runs import RunStore
from memwarden.learning.scheduling import RunScheduler
from memwarden.learning.store import MemoryStore
from memwarden.learning.versions import VersionStore
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient

__all__ = ["LearningSupervisor", "ollama_name"]

log = get_logger()

CANCEL_WAIT = 60.0  # seconds a cancelled run's trainer has to checkpoint
CLOSE_WAIT = 30.0  # seconds the run in progress has to checkpoint when the daemon stops


class LearningSupervisor:
    def __init__(self, config: Config, db: Any, store: MemoryStore, arbiter: Any, ollama: OllamaClient | None,
                 state_dir: Path, gpu_backend: str, clock: Callable[[], float] = time.time,
                 executor: Executor | None = None):
        self._config = config
        self.db = db
        self.store = store
        self.clock = clock
        self.runs = RunStore(db)
        self.versions = VersionStore(db)
        runs_dir = state_dir / "runs"
        self.publisher = Publisher(config, db, self.runs, self.versions, store, ollama, state_dir / "adapters", clock)
        self.execution = RunExecution(config, self.runs, store, self.versions,
                                      TrainingLeases(config, arbiter, gpu_backend),
                                      executor or SubprocessExecutor(runs_dir), self.publisher.finish, runs_dir,
                                      gpu_backend, clock, ollama=ollama)
        self.scheduler = RunScheduler(config, self.runs, store, self.execution.execute, clock)
        self.runs.interrupt_in_progress()  # the daemon died mid-run: resume from the checkpoint

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """A reload (reload.py) hands every part the new config."""
        self._config = config
        for part in (self.publisher, self.execution, self.execution.leases, self.scheduler):
            part.config = config

    @property
    def current(self) -> CurrentRun | None:
        return self.execution.current

    @property
    def task(self) -> asyncio.Task | None:
        return self.scheduler.task

    async def open(self) -> None:
        """Stop the trainers a daemon that died left behind: for the daemon's start hook to await. The first
        tick and the first run do it by themselves otherwise."""
        await self.execution.open()

    # ---- queries -----------------------------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any]:
        return self.runs.get(run_id)

    def history(self, limit: int = 20, adapter: str | None = None) -> list[dict[str, Any]]:
        return self.runs.history(limit, adapter)

    def due(self, now: float) -> list[trigger.Decision]:
        return self.scheduler.due(now)

    def status(self) -> dict[str, Any]:
        cur = self.current
        pending = self.runs.pending()
        return {
            "enabled": self.config.learning.enabled,
            "current": None if cur is None else {
                "run_id": cur.run_id, "adapter": cur.adapter, "state": self.runs.state(cur.run_id),
                "lease": dict(cur.lease.lease) if cur.lease else None, "last": cur.last,
                "steps_seen": cur.steps.seen, "trainer_pid": cur.trainer_pid, "progress": cur.progress(),
                "cpu_fallback": cur.cpu_fallback},
            "pending": pending,
            "pending_runs": [{k: self.runs.get(r)[k] for k in ("id", "adapter", "state")} for r in pending],
            "waiting_runs": [d.to_dict() for d in self.execution.waiting()],
            "due": [d.to_dict() for d in self.due(self.clock())],
            "versions": [{**v, **self.runs.recall(v["run_id"])} for v in self.versions.listing()],
        }

    def conditions(self) -> list[Condition]:
        cur = self.current
        out = health.assess(cur.adapter, cur.steps) if cur else []
        blocked = [c for d in self.execution.waiting() if (c := d.condition()) is not None]
        return out + blocked + list(self.execution.failed.values())

    # ---- actions -------------------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Called every sample pass: resume a pending run, or start one for a due adapter in its window. The
        first tick also starts stopping orphaned trainers, learning enabled or not, without waiting for it."""
        self.execution.begin_open()
        await self.scheduler.tick()

    def start(self, adapter: str, trigger_name: str = "manual") -> dict[str, Any]:
        """Queue a run of `adapter` now (the trigger and window are for automatic runs)."""
        running = self.current.run_id if self.current else "?"
        return self.runs.get(self.scheduler.start(adapter, trigger_name, running))

    async def rollback(self, adapter: str) -> dict[str, Any]:
        return await self.publisher.rollback(adapter)

    async def cancel(self, adapter: str) -> dict[str, Any]:
        cur = self.current
        if cur is None or cur.adapter != adapter:
            waiting = [r for r in self.runs.pending() if self.runs.get(r)["adapter"] == adapter]
            if not waiting:
                raise RuntimeError(f"no run of {adapter} in progress")
            for run_id in waiting:  # queued or waiting for the GPU: nothing runs, nothing to checkpoint
                self.runs.set_state(run_id, "cancelled", finished_at=self.clock())
                self.execution.end_wait(run_id)
            return self.runs.get(waiting[-1])
        cur.cancelling = True
        if cur.job is not None:
            cur.job.preempt()  # the trainer checkpoints first
        task = self.task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), CANCEL_WAIT)
        self.runs.set_state(cur.run_id, "cancelled", finished_at=self.clock())
        return self.runs.get(cur.run_id)

    async def close(self) -> None:
        self.scheduler.closing = self.execution.closing = True
        cur, task = self.current, self.task
        # A trainer in its own unit, or a cluster job, keeps running: the next daemon re-attaches to it.
        if cur is not None and cur.job is not None and cur.job.placement.outlives_daemon:
            log.info("the trainer keeps running; the next daemon re-attaches to it", run=cur.run_id,
                     unit=cur.job.placement.unit, job=cur.job.placement.job_id)
            if task is not None:
                task.cancel()  # stops the waiting only: the run is marked interrupted, its trainer runs on
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        elif cur is not None and cur.job is not None:
            cur.job.preempt()  # checkpoint now; the run resumes after the restart
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), CLOSE_WAIT)
        if task is not None and not task.done():
            task.cancel()  # the run records itself interrupted as the cancel unwinds it
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
