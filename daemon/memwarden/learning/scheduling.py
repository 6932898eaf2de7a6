"""When runs start: one at a time, pending runs first (oldest first), then due adapters in their window.

A pending run (queued, waiting for VRAM, preempted, interrupted) is relaunched on the next tick. Otherwise the
trigger (trigger.py, through RunStore.due_report) names the due adapters; the first due one starts when
`learning.window` is open, and a due adapter waiting for the window is logged once until it starts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from memwarden.config.schema import Config
from memwarden.learning import trigger
from memwarden.learning.runs import FINAL, RunStore
from memwarden.learning.store import MemoryStore
from memwarden.logs import get_logger

log = get_logger()

Execute = Callable[[str], Awaitable[None]]


def new_run_id(now: float) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{os.urandom(2).hex()}"


class RunScheduler:
    def __init__(self, config: Config, runs: RunStore, store: MemoryStore, execute: Execute,
                 clock: Callable[[], float]):
        self.config = config
        self.runs = runs
        self.store = store
        self.execute = execute
        self.clock = clock
        self.task: asyncio.Task | None = None
        self.task_run: str | None = None  # the run self.task executes
        self.closing = False
        self._window_logged: set[str] = set()

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def due(self, now: float) -> list[trigger.Decision]:
        importance = {a: v["importance"] for a, v in self.store.unconsolidated_importance().items()}
        return self.runs.due_report(now, importance, self.config.learning)

    async def tick(self) -> None:
        """Resume a pending run, or start one for a due adapter in its window."""
        cfg = self.config.learning
        if not cfg.enabled or self.closing or self.busy:
            return
        pending = self.runs.pending(limit=1)
        if pending:
            self.launch(pending[0])
            return
        now = self.clock()
        for decision in self.due(now):
            if not decision.due:
                continue
            opens = trigger.next_window_start(cfg.window, now)
            if opens > now:
                if decision.adapter not in self._window_logged:
                    log.info("decision: run due, waiting for the window", window=cfg.window, opens_in_s=opens - now,
                             **decision.log_fields())
                    self._window_logged.add(decision.adapter)
                continue
            self._window_logged.discard(decision.adapter)
            log.info("decision: run due", **decision.log_fields())
            self.start(decision.adapter, "threshold")
            return

    def start(self, adapter: str, trigger_name: str = "manual", running: str = "?") -> str:
        """Queue a run of `adapter` now and launch it (the trigger and window are for automatic runs). Its id.
        `running`: the run in progress, for the refusal's message. A run whose verdict is already recorded may
        still be exporting its adapter to Ollama: the new run is queued, and the next tick launches it."""
        publishing = self.busy and self.task_run is not None and self.runs.state(self.task_run) in FINAL
        if self.busy and not publishing:
            raise RuntimeError(f"a run is in progress ({running}); one at a time")
        if not self.config.learning.base_model:
            raise RuntimeError("learning.base_model is not set")
        profile = self.store.adapters().get(adapter)
        if profile is None:
            raise RuntimeError(f"no memories feed adapter {adapter!r} (see `memwardenctl memories count`)")
        now = self.clock()
        run_id = new_run_id(now)
        self.runs.insert(run_id, adapter, profile, trigger_name, now, self.config.learning.method)
        if not publishing:
            self.launch(run_id)
        return run_id

    def launch(self, run_id: str) -> None:
        self.task_run = run_id
        self.task = asyncio.get_running_loop().create_task(self.execute(run_id), name=f"run-{run_id}")
