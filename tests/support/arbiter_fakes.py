"""An in-process GPU and Ollama for driving GpuArbiter step by step: each call can be held at a gate."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from memwarden.arbiter.arbiter import GpuArbiter
from memwarden.config.schema import Config
from memwarden.snapshots import Gpu, GpuProcess, GpuSnapshot, InstalledModel, LoadedModel

GiB = 1024**3


class Gate:
    """Holds a call until opened; `reached` is set when a call arrives."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def pass_(self) -> None:
        self.reached.set()
        await self.opened.wait()


class FakeGpu:
    """One GPU; bytes booked per pid, as the sim file does."""

    error = None

    def __init__(self, total: int = 12 * GiB):
        self.total = total
        self.booked: dict[int, int] = {}

    async def sample(self) -> GpuSnapshot:
        procs = tuple(GpuProcess(pid, used) for pid, used in self.booked.items())
        return GpuSnapshot("sim", (Gpu(0, "Sim 12G", self.total, sum(self.booked.values()), processes=procs),),
                           time.time())


class FakeOllama:
    """Resident models each booked by a runner pid. Like Ollama, a load that does not fit evicts idle models
    (shortest name first) until it does. Gates hold unload/load; `keep_vram` makes unloaded runners linger."""

    def __init__(self, gpu: FakeGpu, sizes: dict[str, int]):
        self.gpu, self.sizes = gpu, sizes
        self.resident: dict[str, int] = {}  # name → runner pid
        self.next_pid = 5000
        self.unload_gate: Gate | None = None
        self.load_gate: Gate | None = None
        self.keep_vram = False
        self.calls: list[tuple[str, str]] = []
        self.load_duration: float | None = None  # the load seconds a load's answer reports (None: none, as Ollama)

    def put(self, name: str) -> None:
        while self.gpu.total - sum(self.gpu.booked.values()) < self.sizes[name] and self.resident:
            victim = sorted(self.resident)[0]
            self.gpu.booked.pop(self.resident.pop(victim), None)
        self.next_pid += 1
        self.resident[name] = self.next_pid
        self.gpu.booked[self.next_pid] = self.sizes[name]

    async def ps(self) -> list[LoadedModel]:
        return [LoadedModel(name, self.sizes[name], self.sizes[name]) for name in self.resident]

    async def tags(self) -> list[InstalledModel]:
        return [InstalledModel(name, size) for name, size in self.sizes.items()]

    async def show(self, name: str) -> dict:
        return {}

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        if self.unload_gate is not None:
            await self.unload_gate.pass_()
        pid = self.resident.pop(name, None)
        if pid is not None and not self.keep_vram:
            self.gpu.booked.pop(pid, None)

    async def load(self, name: str, keep_alive: int | str) -> float | None:
        self.calls.append(("load", name))
        if self.load_gate is not None:
            await self.load_gate.pass_()
        if name not in self.resident:
            self.put(name)
        return self.load_duration


def make_arbiter(tmp_path: Path, db, gpu: FakeGpu, ollama: FakeOllama, reserve: int = 0,
                 evict_timeout: float = 30.0) -> GpuArbiter:
    config = fake_config(reserve=reserve, evict_timeout=evict_timeout)
    proc_root = tmp_path / "proc"
    proc_root.mkdir(exist_ok=True)
    return GpuArbiter(config, db, gpu, ollama, proc_root=proc_root)  # type: ignore[arg-type]


def fake_config(reserve: int = 0, evict_timeout: float = 30.0, dry_run: bool = False,
                scheduler: str | None = None) -> Config:
    """The built-in defaults but for what a test sets (scheduler: the configured policy unless given)."""
    config = Config()
    gpu = dataclasses.replace(config.gpu, reserve=reserve, evict_timeout=evict_timeout,
                              scheduler=scheduler or config.gpu.scheduler)
    return dataclasses.replace(config, gpu=gpu, daemon=dataclasses.replace(config.daemon, dry_run=dry_run))


def proc_stat(proc_root: Path, pid: int, ppid: int = 1, start: int = 100) -> None:
    """A /proc/PID/stat line with what processes.parse_stat reads: state, parent, group and start time."""
    (proc_root / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc_root / str(pid) / "stat").write_text(f"{pid} (holder) S {ppid} {pid} " + "0 " * 16 + f"{start} 0\n")
