"""The GPU arbiter: the lease ledger and the model scheduler over shared inputs, behind one facade.

Every plan comes from a pure policy (policies/placement.py, policies/cache.py) over fresh snapshots; the parts
only gather the inputs, log each decision with them, and act: unload, confirm the VRAM is really free on the
GPU, grant; on release reload what was evicted and confirm it is resident. One lock serialises all of it, so
two plans never race for the same bytes.

    inputs.py     ArbiterInputs: GPU snapshot, /api/ps, model location, the residency record (observe)
    ledger.py     LeaseLedger: grant, release, preempt, watch, reap; restoring.py brings models back
    scheduler.py  ModelScheduler: ensure, evict, pin, the model list; model_table.py is its table
GpuArbiter builds them and forwards what the rest of the daemon calls; a caller may also use a part directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memwarden.arbiter.errors import ArbiterError
from memwarden.arbiter.inputs import ArbiterInputs
from memwarden.arbiter.leases import Lease, LeaseStore
from memwarden.arbiter.ledger import LeaseLedger
from memwarden.arbiter.model_table import ModelTable, switch_clock
from memwarden.arbiter.scheduler import MODELS_PAGE, ModelScheduler
from memwarden.config.schema import Config
from memwarden.ollama.client import OllamaClient
from memwarden.ollama.installed import InstalledModels
from memwarden.ollama.service import ServiceControl
from memwarden.policies import cache
from memwarden.policies.placement import GpuBudget, Held, Refusal
from memwarden.probes.runner import ProbeRunner
from memwarden.snapshots import GpuSnapshot, LoadedModel

__all__ = ["ArbiterError", "GpuArbiter"]


class GpuArbiter:
    def __init__(self, config: Config, db: Any, gpu: ProbeRunner, ollama: OllamaClient | None,
                 service: ServiceControl | None = None, clock: Callable[[], float] = time.time,
                 proc_root: Path = Path("/proc")):
        table = ModelTable(db)
        entries, keep_alive = table.load()
        self.inputs = ArbiterInputs(config, gpu, ollama, clock, proc_root,
                                    cache.CacheState.of(entries, switches=switch_clock(entries)), keep_alive)
        self.lock = asyncio.Lock()
        self.ledger = LeaseLedger(self.inputs, LeaseStore(db), self.lock, service)
        self.scheduler = ModelScheduler(self.inputs, table, self.lock, self.ledger)

    # ---- shared state, read (and for config, clock and the record, replaced) by callers ---------------

    @property
    def config(self) -> Config:
        return self.inputs.config

    @config.setter
    def config(self, config: Config) -> None:  # a reload hands both parts the new config
        self.inputs.config = config

    @property
    def clock(self) -> Callable[[], float]:
        return self.inputs.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.inputs.clock = clock

    @property
    def proc_root(self) -> Path:
        return self.inputs.proc_root

    @property
    def cache(self) -> cache.CacheState:
        return self.inputs.cache

    @cache.setter
    def cache(self, state: cache.CacheState) -> None:
        self.inputs.cache = state

    @property
    def keep_alive(self) -> dict[str, str]:
        return self.inputs.keep_alive

    @property
    def stats(self) -> dict[str, int]:
        return self.inputs.stats

    @property
    def leases(self) -> dict[str, Lease]:
        return self.ledger.leases

    @property
    def store(self) -> LeaseStore:
        return self.ledger.store

    @property
    def changed(self) -> asyncio.Condition:
        return self.ledger.changed

    @property
    def serving_busy_until(self) -> float:
        return self.ledger.serving_busy_until

    @serving_busy_until.setter
    def serving_busy_until(self, until: float) -> None:
        self.ledger.serving_busy_until = until

    @property
    def installed(self) -> InstalledModels | None:
        return self.scheduler.installed

    # ---- inputs ----------------------------------------------------------------------------------------

    async def locate_models(self, loaded: list[LoadedModel], snap: GpuSnapshot) -> None:
        await self.inputs.locate_models(loaded, snap)

    def observe(self, loaded: list[LoadedModel] | None, snap: GpuSnapshot | None) -> None:
        self.inputs.observe(loaded, snap)

    # ---- the GPU view ----------------------------------------------------------------------------------

    def gpu_view(self, snap: GpuSnapshot) -> tuple[GpuBudget, ...]:
        """Each GPU's leasable bytes and model budget (the `gpu` reply and /metrics)."""
        return self.ledger.gpu_view(snap)

    def held(self, snap: GpuSnapshot) -> list[Held]:
        return self.ledger.held(snap)

    def budget(self, snap: GpuSnapshot, index: int) -> int:
        return self.ledger.model_budget(snap, index)

    # ---- leases ----------------------------------------------------------------------------------------

    async def acquire(self, size: int, holder: str, pid: int | None = None, uid: int | None = None,
                      gpu: int | None = None, priority: int = 0, preemptible: bool = False,
                      wait: float = 0.0) -> dict[str, Any]:
        return await self.ledger.acquire(size, holder, pid, uid, gpu, priority, preemptible, wait)

    async def try_grant(self, size: int, holder: str, pid: int | None, uid: int | None, gpu: int | None,
                        priority: int, preemptible: bool) -> Lease | Refusal:
        return await self.ledger.try_grant(size, holder, pid, uid, gpu, priority, preemptible)

    async def release(self, lease_id: str, reason: str = "released by holder") -> dict[str, Any]:
        return await self.ledger.release(lease_id, reason)

    async def preempt(self, lease_id: str, reason: str = "serving needs the GPU") -> dict[str, Any]:
        return await self.ledger.preempt(lease_id, reason)

    async def watch(self, lease_id: str, timeout: float) -> dict[str, Any]:
        return await self.ledger.watch(lease_id, timeout)

    async def refresh(self, lease_id: str) -> None:
        await self.ledger.refresh(lease_id)

    async def reap(self) -> list[str]:
        return await self.ledger.reap()

    async def resume_interrupted(self) -> None:
        await self.ledger.resume_interrupted()

    def active_leases(self) -> list[dict[str, Any]]:
        return self.ledger.active()

    # ---- models ----------------------------------------------------------------------------------------

    async def ensure(self, name: str, keep_alive: object = None, load: bool = True) -> dict[str, Any]:
        return await self.scheduler.ensure(name, keep_alive, load)

    async def evict(self, name: str) -> dict[str, Any]:
        return await self.scheduler.evict(name)

    async def pin(self, name: str, pinned: bool) -> dict[str, Any]:
        return await self.scheduler.pin(name, pinned)

    def models(self, limit: int = MODELS_PAGE) -> list[dict[str, Any]]:
        return self.scheduler.models(limit)

    def resident(self, name: str) -> bool:
        return self.scheduler.resident(name)

    def note_use(self, name: str, keep_alive: str | None) -> None:
        self.scheduler.note_use(name, keep_alive)

    def mark_resident(self, name: str) -> None:
        self.scheduler.mark_resident(name)

    def loads_freely(self, name: str) -> bool:
        return self.scheduler.loads_freely(name)

    def note_answer(self, name: str, answer: object) -> None:
        """An answer's final object for `name`: its load_duration, when it loaded the model, is learned."""
        self.scheduler.note_answer(name, answer)

    async def installed_size(self, name: str) -> int | None:
        return await self.scheduler.installed_size(name)

    def flush(self) -> None:
        self.scheduler.flush()
