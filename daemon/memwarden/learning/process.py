"""The trainer as a supervised child: `python -m memwarden.training JOB.json`, progress read line by line.

Its stdout carries the progress events (jobspec.py); its stderr goes to a log file beside the run, so a chatty
library can never fill a pipe and stall it. MEMWARDEN_PARENT_PID lets the trainer notice the daemon's death and
checkpoint out (a trainer must not outlive its supervisor and keep the GPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memwarden.logs import get_logger

log = get_logger()


class TrainerProcess:
    def __init__(self, spec_path: Path, log_path: Path, on_event: Callable[[dict[str, Any]], None],
                 python: str = sys.executable, env: dict[str, str] | None = None):
        self.spec_path = spec_path
        self.log_path = log_path
        self.on_event = on_event
        self.python = python
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.last_event: dict[str, Any] | None = None
        self._reader: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        env = {**os.environ, **self.env, "MEMWARDEN_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with self.log_path.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "memwarden.training", str(self.spec_path), stdout=asyncio.subprocess.PIPE,
                stderr=err, stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not a progress line (a library printing to stdout)
            if isinstance(event, dict) and "event" in event:
                self.last_event = event
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("training progress handler failed", event=event.get("event"))

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code

    def preempt(self) -> None:
        """Ask for a checkpoint and exit (the trainer answers SIGTERM within one step, with exit 75)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
