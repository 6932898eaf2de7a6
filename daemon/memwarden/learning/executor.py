"""Where a trainer runs: the executor seam between run execution and a process, a unit or a cluster job.

An Executor starts a JobSpec and hands back a Job: its progress arrives as events (jobspec.py) through the
callback, `preempt()` asks it to checkpoint and stop (exit 75), `cancel()` stops it at once, `wait()` gives its
exit code, `placement` says where it runs. Before a phase starts, `find()` reports what became of the last job
started for it and not seen ending (reattach.py decides from that: watch it, take its exit, or start);
`adopt()` re-attaches to it, `forget()` drops it once its exit is taken.
`stop_orphans()` runs once before the first job: a job left running by a daemon that died, and that cannot be
adopted, is stopped (it checkpoints) before its run resumes elsewhere.

SubprocessExecutor is `python -m memwarden.training` as a child of the daemon (process.py), with a pid file in
the run's directory so that the next daemon can find a trainer the last one left behind. It adopts nothing: its
trainer checkpoints out when the daemon dies (MEMWARDEN_PARENT_PID). systemd_executor.py runs each trainer as
its own unit, which outlives the daemon and is adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from memwarden.gpu import simfile
from memwarden.learning.jobspec import JobSpec
from memwarden.learning.process import TrainerProcess
from memwarden.learning.reattach import NOTHING, Trace

OnEvent = Callable[[dict[str, Any]], None]
ORPHAN_GRACE = 30.0  # seconds an orphaned trainer has to checkpoint after SIGTERM before SIGKILL
ORPHAN_POLL = 0.1


@dataclass(frozen=True)
class JobRequest:
    spec: JobSpec
    spec_file: Path  # where the spec is written for the trainer to read
    run_dir: Path  # the run's directory: the trainer's log (and, for a subprocess, its pid file) live here
    gpu: int | None  # the leased GPU, None for none
    ram_bytes: int | None = None  # the run's RAM estimate, where one was made (an executor may cap the job by it)


@dataclass(frozen=True)
class Placement:
    executor: str  # "subprocess", "systemd" or "ray"
    pid: int | None = None
    gpu: int | None = None
    unit: str | None = None  # the systemd unit the job runs as
    node: str | None = None  # the cluster node it runs on (ray), once placed
    job_id: str | None = None  # the cluster's id of the job (ray)
    outlives_daemon: bool = False  # a daemon that stops leaves the job running (it is adopted after the restart)


class Job(Protocol):
    @property
    def placement(self) -> Placement: ...
    @property
    def last_event(self) -> dict[str, Any] | None: ...
    def preempt(self) -> None: ...
    def cancel(self) -> None: ...
    async def wait(self) -> int: ...


class Executor(Protocol):
    async def start(self, request: JobRequest, on_event: OnEvent) -> Job: ...
    async def find(self, request: JobRequest) -> Trace: ...
    async def adopt(self, request: JobRequest, on_event: OnEvent) -> Job | None: ...
    async def forget(self, request: JobRequest) -> None: ...
    async def stop_orphans(self) -> None: ...


PID_FILE = "trainer.pid"


class SubprocessJob:
    def __init__(self, proc: TrainerProcess, pid_file: Path, gpu: int | None):
        self.proc = proc
        self.pid_file = pid_file
        self.gpu = gpu

    @property
    def placement(self) -> Placement:
        return Placement("subprocess", self.proc.pid, self.gpu)

    @property
    def last_event(self) -> dict[str, Any] | None:
        return self.proc.last_event

    def preempt(self) -> None:
        self.proc.preempt()

    def cancel(self) -> None:
        self.proc.kill()

    async def wait(self) -> int:
        try:
            return await self.proc.wait()
        finally:
            self.pid_file.unlink(missing_ok=True)


class SubprocessExecutor:
    remote = False  # the trainer runs on this host, under this host's lease

    def __init__(self, runs_dir: Path, monotonic: Callable[[], float] = time.monotonic):
        self.runs_dir = runs_dir
        self.monotonic = monotonic

    async def start(self, request: JobRequest, on_event: OnEvent) -> SubprocessJob:
        request.spec.write(request.spec_file)
        env = {"CUDA_VISIBLE_DEVICES": "" if request.gpu is None else str(request.gpu)}
        proc = TrainerProcess(request.spec_file, request.run_dir / "trainer.log", on_event, env=env)
        await proc.start()
        pid_file = request.run_dir / PID_FILE
        pid_file.write_text(str(proc.pid))
        return SubprocessJob(proc, pid_file, request.gpu)

    async def find(self, request: JobRequest) -> Trace:
        """A child's exit is known only to the daemon that reaped it; what a trainer that finished unwatched
        left is in the run's directory (reattach.adapter_home)."""
        return NOTHING

    async def adopt(self, request: JobRequest, on_event: OnEvent) -> None:
        """A child trainer does not outlive its daemon: there is never one to adopt."""
        return None

    async def forget(self, request: JobRequest) -> None:
        """Nothing is kept of a child trainer once it has exited."""

    async def stop_orphans(self) -> None:
        """SIGTERM (it checkpoints), then SIGKILL after ORPHAN_GRACE: waited for without blocking the loop."""
        pid_files = list(self.runs_dir.glob(f"*/{PID_FILE}")) if self.runs_dir.exists() else []
        for pid_file in pid_files:
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text())
                if simfile.pid_alive(pid):
                    os.kill(pid, signal.SIGTERM)
                    if not await self._gone(pid, ORPHAN_GRACE):
                        os.kill(pid, signal.SIGKILL)
            pid_file.unlink(missing_ok=True)

    async def _gone(self, pid: int, within: float) -> bool:
        """The orphan is not our child: its exit is awaited on a pidfd (readable once it has exited), or, where
        the kernel has none, by polling its liveness on the loop."""
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return await self._polled(pid, within)
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            await asyncio.wait_for(exited, within)
            return True
        except TimeoutError:
            return not simfile.pid_alive(pid)
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    async def _polled(self, pid: int, within: float) -> bool:
        deadline = self.monotonic() + within
        while simfile.pid_alive(pid):
            if self.monotonic() >= deadline:
                return False
            await asyncio.sleep(ORPHAN_POLL)
        return True
