"""The GPU arbiter: owns the leases and the adapter cache, and carries out their plans against Ollama.
The lease half (grant, release, restore, reap) is in leasing.py, the model scheduler in scheduler.py; this
module holds the inputs both halves share.

Every plan comes from a pure policy (policies/placement.py, policies/cache.py) over fresh snapshots; this class
only gathers the inputs, logs each decision with them, and acts: unload, confirm the VRAM is really free on
the GPU, grant; on release reload what was evicted and confirm it is resident. One lock serialises all of it,
so two plans never race for the same bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from memwarden.arbiter.attribution import locate
from memwarden.arbiter.leases import Lease, LeaseStore
from memwarden.arbiter.leasing import ArbiterError, Leasing
from memwarden.arbiter.scheduler import ModelScheduling
from memwarden.config.schema import Config
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient, OllamaError, model_blob_path
from memwarden.ollama.service import ServiceControl
from memwarden.policies import cache
from memwarden.policies.placement import Resident
from memwarden.probes.runner import ProbeRunner
from memwarden.snapshots import GpuSnapshot, LoadedModel

log = get_logger()

FOREVER_AFTER = 100 * 365 * 86400  # an expires_at further out than this means keep_alive < 0


class GpuArbiter(Leasing, ModelScheduling):
    def __init__(self, config: Config, db: Any, gpu: ProbeRunner, ollama: OllamaClient | None,
                 service: ServiceControl | None = None, clock: Callable[[], float] = time.time,
                 proc_root: Path = Path("/proc")):
        self.config = config
        self.gpu = gpu
        self.ollama = ollama
        self.service = service
        self.clock = clock
        self.proc_root = proc_root
        self.store = LeaseStore(db)
        self._db = db
        self.leases: dict[str, Lease] = {lease.id: lease for lease in self.store.active()}
        self._init_scheduler(db)  # the model table, each model's keep_alive, what Ollama has installed
        self.blobs: dict[str, str] = {}  # model → weights path, from /api/show
        self.located: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.lock = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.stats = {"hits": 0, "misses": 0, "evictions": 0, "grants": 0, "refusals": 0}
        # Preemptible leases wait until serving has been idle (proxy.preempt). Monotonic: on the wall clock, a
        # step back of a day kept every preemptible lease (training) waiting a day.
        self.serving_busy_until = 0.0
        self._orphaned: set[str] = set()  # leases whose holder died while their processes run (logged once)

    # ---- inputs ----------------------------------------------------------------------------------------

    async def gpu_snapshot(self) -> GpuSnapshot:
        snap = await self.gpu.sample()
        if snap is None:
            raise ArbiterError(f"the GPU cannot be read: {self.gpu.error}")
        return snap

    async def loaded(self) -> list[LoadedModel] | None:
        """Resident models per /api/ps; None when Ollama is off or unreachable (leases then use free memory)."""
        if self.ollama is None:
            return None
        try:
            return await self.ollama.ps()
        except OllamaError as exc:
            log.warning("Ollama unreachable; planning on free VRAM alone", error=str(exc))
            return None

    async def locate_models(self, loaded: list[LoadedModel], snap: GpuSnapshot) -> None:
        if self.ollama is None:
            return
        for model in loaded:
            if model.name not in self.blobs:
                try:
                    path = model_blob_path(await self.ollama.show(model.name))
                except OllamaError:
                    path = None
                if path:
                    self.blobs[model.name] = path
        self.located = locate(snap, self.blobs, self.proc_root)

    def observe(self, loaded: list[LoadedModel] | None, snap: GpuSnapshot | None) -> None:
        """Residency and measured sizes from a sample pass (or from a fresh read during a plan)."""
        if loaded is None:
            return
        names = {m.name for m in loaded}
        for model in loaded:
            where = self.located.get(model.name)
            gpu = where[0] if where else (snap.gpus[0].index if snap and len(snap.gpus) == 1 else None)
            self.cache = cache.set_resident(self.cache, model.name, True, model.size_vram or model.size,
                                            measured=model.size_vram > 0, gpu=gpu)
            if model.name not in self.keep_alive and model.expires_at:
                self.keep_alive[model.name] = self._keep_alive_from_expiry(model.expires_at)
        for entry in self.cache.resident():
            if entry.name not in names:
                self.cache = cache.set_resident(self.cache, entry.name, False)

    def _keep_alive_from_expiry(self, expires_at: str) -> str:
        try:
            left = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp() - self.clock()
        except ValueError:
            return self.config.ollama.keep_alive
        return "-1m" if left > FOREVER_AFTER else self.config.ollama.keep_alive

    def residents(self, loaded: list[LoadedModel] | None) -> list[Resident]:
        """Resident models in eviction order (the scheduler's policy)."""
        if not loaded:
            return []
        by_name = {m.name: m for m in loaded}
        order = [e.name for e in cache.eviction_order(self.cache, self.config.gpu.scheduler)]
        order += sorted(n for n in by_name if n not in order)  # pinned last: the planner skips them
        out = []
        for name in order:
            m = by_name.get(name)
            if m is None:
                continue
            gpu, pids = self.located.get(name, (None, ()))
            if gpu is None:
                entry = self.cache.entries.get(name)
                gpu = entry.gpu if entry else None
            entry = self.cache.entries.get(name)
            out.append(Resident(name, m.size_vram, gpu, bool(entry and entry.pinned), pids))
        return out

    # The lease half is in leasing.py (Leasing); the model scheduler in scheduler.py (ModelScheduling): residency,
    # room for a model, the bounded table of models.
