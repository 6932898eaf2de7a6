"""A real state database, config and memory store for the learning parts; a fake executor and arbiter so that
a run's state machine runs without torch or a trainer subprocess."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from memwarden.arbiter.errors import ArbiterError
from memwarden.config import parse_config
from memwarden.learning.eval_report import EvalReport, Losses, Recall
from memwarden.learning.executor import JobRequest, OnEvent, Placement
from memwarden.learning.jobspec import EXIT_DONE, EXIT_PREEMPTED
from memwarden.learning.reattach import NOTHING, Trace
from memwarden.learning.store import MemoryStore
from memwarden.learning.supervisor import LearningSupervisor
from memwarden.state.db import open_state
from support.clock import Clock
from support.memories import FACTS

T0 = 1_700_000_000.0




@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def db(tmp_path):
    database = open_state(tmp_path / "state")
    yield database
    database.close()


@pytest.fixture
def make_config(tmp_path) -> Callable[..., Any]:
    def make(learning: dict[str, Any] | None = None, gpu: dict[str, Any] | None = None) -> Any:
        data: dict[str, dict[str, Any]] = {
            "ollama": {"url": ""}, "gpu": gpu or {"backend": "none"},
            "learning": {"enabled": True, "base_model": str(tmp_path / "base"), "importance_threshold": 20,
                         "min_interval": "1h", "dry_run_steps": 0, "device": "cpu", **(learning or {})}}
        return parse_config(data, env={"STATE_DIRECTORY": str(tmp_path / "state"),
                                       "RUNTIME_DIRECTORY": str(tmp_path)}, uid=1000)
    return make


@pytest.fixture
def store(db, clock) -> MemoryStore:
    return MemoryStore(db, (), clock=clock)


def rec(**kw) -> dict[str, Any]:
    """A valid memory record, with `kw` changed."""
    base = {"profile": "alice", "kind": "journal", "content": "walked by the river", "importance": 5}
    base.update(kw)
    return base


def line(**kw) -> str:
    return json.dumps(rec(**kw))


def remember(store: MemoryStore, profile: str = "alice", importance: int = 5, repeat: int = 1) -> int:
    """FACTS as memories of `profile`; their summed importance."""
    for i in range(repeat):
        for kind, content, response in FACTS:
            store.add(profile, kind, f"{content} ({i})", response, importance=importance)
    return importance * len(FACTS) * repeat


# ---- a fake executor ------------------------------------------------------------------------------------------


@dataclass
class Script:
    """What one fake job does: emit `events`, then exit `code` — or, with `hold`, wait until preempted (75)."""

    code: int = EXIT_DONE
    events: list[dict[str, Any]] = field(default_factory=list)
    hold: bool = False
    on_stop: list[dict[str, Any]] = field(default_factory=list)  # events of a held job once asked to stop
    recalled: int = 40  # of the run's 40 memories given back: below learning.min_recall (0.9) is not promoted


class FakeJob:
    def __init__(self, request: JobRequest, script: Script, on_event: OnEvent, pid: int,
                 outlives_daemon: bool = False):
        self.request, self.script, self.on_event, self.pid = request, script, on_event, pid
        self.outlives_daemon = outlives_daemon
        self.last_event: dict[str, Any] | None = None
        self.preempted = asyncio.Event()
        self.emitted = asyncio.Event()  # its events are out: it runs (or holds)
        self.cancelled = False

    @property
    def placement(self) -> Placement:
        return Placement("fake", self.pid, self.request.gpu, outlives_daemon=self.outlives_daemon)

    def preempt(self) -> None:
        self.preempted.set()

    def cancel(self) -> None:
        self.cancelled = True
        self.preempted.set()

    async def wait(self) -> int:
        for event in self.script.events:
            self.last_event = event
            self.on_event(event)
        self.emitted.set()
        if self.script.hold:
            await self.preempted.wait()
            for event in self.script.on_stop:
                self.on_event(event)
            return EXIT_PREEMPTED
        if self.script.code == EXIT_DONE and not self.request.spec.dry_run_steps:
            finish_like_the_trainer(self.request, recalled=self.script.recalled)
        return self.script.code


def finish_like_the_trainer(request: JobRequest, before: float = 2.0, after: float = 1.0, recalled: int = 40) -> None:
    """final/ and eval.json, as training/trainer.py leaves them."""
    out = Path(request.spec.output_dir)
    (out / "final").mkdir(parents=True, exist_ok=True)
    (out / "final" / "adapter_model.safetensors").write_bytes(b"weights")
    EvalReport(request.spec.run_id, request.spec.adapter, request.spec.method, 24, str(out / "final"),
               Losses(before, after, None, None), tokens_per_s=100.0, recall=Recall(40, recalled, 0.95)).write(out)


class FakeExecutor:
    """Runs the scripts in order, one per job started; remembers every request."""

    def __init__(self, *scripts: Script):
        self.scripts = list(scripts)
        self.requests: list[JobRequest] = []
        self.jobs: list[FakeJob] = []
        self.started = asyncio.Event()
        self.orphans_stopped = 0
        self.adoptable: Script | None = None
        self.adopted: list[FakeJob] = []
        self.left: Trace = NOTHING  # what the first phase finds the last daemon left of its job
        self.left_adapter: int | None = None  # that job finished its real run (final/, eval.json), recalling as many
        self.forgotten: list[JobRequest] = []
        self.outlives_daemon = False  # the jobs it starts keep running when the daemon stops (systemd units)

    async def start(self, request: JobRequest, on_event: OnEvent) -> FakeJob:
        self.requests.append(request)
        job = FakeJob(request, self.scripts.pop(0) if self.scripts else Script(), on_event, 4000 + len(self.jobs),
                      self.outlives_daemon)
        self.jobs.append(job)
        self.started.set()
        return job

    async def find(self, request: JobRequest) -> Trace:
        if self.adoptable is not None:
            return Trace("running")
        if self.left_adapter is not None:
            finish_like_the_trainer(request, recalled=self.left_adapter)
            self.left_adapter = None
        left, self.left = self.left, NOTHING
        return left

    async def forget(self, request: JobRequest) -> None:
        self.forgotten.append(request)

    async def adopt(self, request: JobRequest, on_event: OnEvent) -> FakeJob | None:
        """The `adoptable` script's job, once, as a unit left running by the last daemon would be."""
        if self.adoptable is None:
            return None
        self.requests.append(request)
        job = FakeJob(request, self.adoptable, on_event, 5000, outlives_daemon=True)
        self.adoptable = None
        self.adopted.append(job)
        self.jobs.append(job)
        self.started.set()
        return job

    async def stop_orphans(self) -> None:
        self.orphans_stopped += 1


class FakeArbiter:
    """Grants leases of GPU 0 (or refuses with `refuse`); `preempt()` ends a lease's watch as preempted."""

    def __init__(self, refuse: str | None = None, holders: tuple[str, ...] = ()):
        self.refuse = refuse
        self.holders = holders
        self.acquired: list[dict[str, Any]] = []
        self.released: list[str] = []
        self._preempted = asyncio.Event()

    async def acquire(self, size: int, holder: str, pid: int | None = None, *, preemptible: bool = False):
        if self.refuse:
            raise ArbiterError(self.refuse, self.holders)
        lease = {"id": f"L{len(self.acquired) + 1}", "gpu": 0, "size": size, "holder": holder,
                 "preemptible": preemptible}
        self.acquired.append(lease)
        return lease

    async def release(self, lease_id: str, reason: str = "") -> dict[str, Any]:
        self.released.append(lease_id)
        return {"id": lease_id}

    async def watch(self, lease_id: str, timeout: float) -> dict[str, Any]:
        await self._preempted.wait()
        return {"state": "preempting"}

    def preempt(self) -> None:
        self._preempted.set()


@pytest.fixture
def make(db, store, clock, tmp_path, make_config):
    def factory(*scripts: Script, arbiter=None, backend="none", **learning) -> tuple[LearningSupervisor, FakeExecutor]:
        gpu = {"backend": "sim", "sim_file": str(tmp_path / "gpu.json")} if backend == "sim" else None
        executor = FakeExecutor(*scripts)
        sup = LearningSupervisor(make_config(learning, gpu), db, store, arbiter or FakeArbiter(), None,
                                 tmp_path / "state", backend, clock=clock, executor=executor)
        return sup, executor
    return factory


async def finished(sup: LearningSupervisor) -> dict:
    assert sup.task is not None
    await sup.task
    return sup.history(1)[0]
