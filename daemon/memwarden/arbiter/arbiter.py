"""The GPU arbiter: owns the leases and the adapter cache, and carries out their plans against Ollama.
The lease half (grant, release, restore, reap) is in leasing.py; this module holds the inputs both halves
share and the adapter scheduler.

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
from memwarden.config.schema import Config
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient, OllamaError, keep_alive_value, model_blob_path, normalize
from memwarden.ollama.service import ServiceControl
from memwarden.policies import cache
from memwarden.policies.placement import Resident, available
from memwarden.probes.runner import ProbeRunner
from memwarden.snapshots import GpuSnapshot, LoadedModel
from memwarden.units import format_size, parse_keep_alive

log = get_logger()

FOREVER_AFTER = 100 * 365 * 86400  # an expires_at further out than this means keep_alive < 0


class GpuArbiter(Leasing):
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
        self.cache = self._load_cache()
        self.blobs: dict[str, str] = {}  # model → weights path, from /api/show
        self.keep_alive: dict[str, str] = {}  # model → the keep_alive last asked for (proxy, adapters load)
        self.located: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.lock = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.stats = {"hits": 0, "misses": 0, "evictions": 0, "grants": 0, "refusals": 0}
        self._dirty: set[str] = set()
        # Preemptible leases wait until serving has been idle (proxy.preempt). Monotonic: on the wall clock, a
        # step back of a day kept every preemptible lease (training) waiting a day.
        self.serving_busy_until = 0.0
        self._orphaned: set[str] = set()  # leases whose holder died while their processes run (logged once)

    # ---- inputs ----------------------------------------------------------------------------------------

    def _load_cache(self) -> cache.CacheState:
        return cache.CacheState.of(cache.Entry(
            row["name"], row["size"] or 0, bool(row["size_measured"]), False, bool(row["pinned"]),
            row["last_used"] or 0.0, row["hits"] or 0) for row in self._db["adapters"].rows)

    def _save_entry(self, name: str) -> None:
        e = self.cache.entries[name]
        self._db["adapters"].upsert({"name": name, "pinned": int(e.pinned), "size": e.size,
                                     "size_measured": int(e.size_measured), "last_used": e.last_used,
                                     "hits": e.hits, "keep_alive": self.keep_alive.get(name)}, pk="name")

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

    # ---- the adapter scheduler -------------------------------------------------------------------------

    def resident(self, name: str) -> bool:
        entry = self.cache.entries.get(name)
        return bool(entry and entry.resident)

    def note_use(self, name: str, keep_alive: str | None) -> None:
        """A served request for a resident model: an in-memory touch, written to SQLite by flush()."""
        self.cache = cache.touch(self.cache, name, self.clock())
        if keep_alive is not None:
            self.keep_alive[name] = keep_alive
        self.stats["hits"] += 1
        self._dirty.add(name)

    def mark_resident(self, name: str) -> None:
        if not self.resident(name):
            self.cache = cache.set_resident(self.cache, name, True)

    def flush(self) -> None:
        for name in self._dirty:
            self._save_entry(name)
        self._dirty.clear()

    def budget(self, snap: GpuSnapshot, index: int) -> int:
        """VRAM the scheduler may fill with models on GPU `index`: total − reserve − leases."""
        g = snap.gpu(index)
        if g is None:
            return 0
        leased = sum(lease.size for lease in self.leases.values() if lease.gpu == index)
        return max(0, g.total_bytes - self.config.gpu.reserve - leased)

    def estimate(self, name: str, installed_size: int | None) -> int:
        entry = self.cache.entries.get(name)
        if entry is not None and entry.size_measured:
            return entry.size
        return installed_size or (entry.size if entry else 0)

    async def ensure(self, name: str, keep_alive: str | None = None, load: bool = True) -> dict[str, Any]:
        """Make `name` resident: a hit when it already is; else evict by policy until it fits, then load.
        With load=False (the proxy) only make room: the request itself makes Ollama load it."""
        if self.ollama is None:
            raise ArbiterError("no Ollama configured (ollama.url is empty)")
        name = normalize(name)
        if keep_alive is not None:
            self.keep_alive[name] = keep_alive
        async with self.lock:
            now = self.clock()
            loaded = await self.ollama.ps()
            snap = await self.gpu_snapshot()
            await self.locate_models(loaded, snap)
            self.observe(loaded, snap)
            self.cache = cache.touch(self.cache, name, now)
            if any(normalize(m.name) == name for m in loaded):
                self.stats["hits"] += 1
                self._save_entry(name)
                return {"model": name, "hit": True, "evicted": [], "loaded": False}
            self.stats["misses"] += 1
            sizes = {m.name: m.size for m in await self.ollama.tags()}
            if name not in sizes:
                raise ArbiterError(f"model {name!r} is not installed in Ollama")
            need = self.estimate(name, sizes[name])
            self.cache = cache.set_resident(self.cache, name, False, need)
            room = self._plan_room(name, need, snap)
            log.info("decision: make room", decision="scheduler.room", model=name, need=need,
                     policy=self.config.gpu.scheduler, victims=list(room.victims), fits=room.fits,
                     budget=room.budget, used_after=room.used_after, dry_run=self.config.daemon.dry_run)
            if not room.fits:
                self._save_entry(name)
                raise ArbiterError(
                    f"{name} needs {format_size(need)} but only {format_size(room.budget - room.used_after)} "
                    f"of the {format_size(room.budget)} model budget can be freed (pinned models and leases "
                    "hold the rest)")
            if self.config.daemon.dry_run:
                return {"model": name, "hit": False, "evicted": [], "would_evict": list(room.victims),
                        "loaded": False}
            for victim in room.victims:
                await self.ollama.unload(victim)
                self.cache = cache.evicted(self.cache, victim, self.config.gpu.scheduler)
                self.stats["evictions"] += 1
            if room.victims:
                await self._confirm_free(self._target_gpu(snap), need, set(), self.config.gpu.evict_timeout)
            if load:
                ka = parse_keep_alive(self.keep_alive.get(name, self.config.ollama.keep_alive))
                await self.ollama.load(name, keep_alive_value(ka))
                self.cache = cache.set_resident(self.cache, name, True)
            self._save_entry(name)
            return {"model": name, "hit": False, "evicted": list(room.victims), "loaded": load}

    def max_loaded(self, snap: GpuSnapshot) -> int:
        """Ollama's OLLAMA_MAX_LOADED_MODELS as configured here; 0 there means 3 per GPU."""
        cap = self.config.ollama.max_loaded_models
        return cap if cap > 0 else 3 * max(1, len(snap.gpus))

    def _target_gpu(self, snap: GpuSnapshot) -> int:
        return max(snap.gpus, key=lambda g: self.budget(snap, g.index)).index if snap.gpus else 0

    def _plan_room(self, name: str, need: int, snap: GpuSnapshot) -> cache.RoomPlan:
        """Room on the GPU with the largest budget; with models of unknown placement, all GPUs form one pool."""
        if not snap.gpus:
            return cache.RoomPlan((), True, 0, 0)  # no GPU: Ollama runs on the CPU, nothing to arbitrate
        if len(snap.gpus) == 1 or any(e.gpu is None for e in self.cache.resident()):
            budget = sum(self.budget(snap, g.index) for g in snap.gpus)
            return cache.plan_room(self.cache, name, need, budget, self.config.gpu.scheduler,
                                   self.max_loaded(snap))
        plans = []
        for g in snap.gpus:
            state = cache.CacheState(
                {n: e for n, e in self.cache.entries.items() if e.gpu in (g.index, None) or not e.resident},
                self.cache.inflation)
            plans.append(cache.plan_room(state, name, need, self.budget(snap, g.index), self.config.gpu.scheduler,
                                         self.max_loaded(snap)))
        return min(plans, key=lambda p: (not p.fits, len(p.victims)))

    async def evict(self, name: str) -> dict[str, Any]:
        if self.ollama is None:
            raise ArbiterError("no Ollama configured (ollama.url is empty)")
        name = normalize(name)
        async with self.lock:
            await self.ollama.unload(name)
            if name in self.cache.entries:
                self.cache = cache.evicted(self.cache, name, self.config.gpu.scheduler)
        return {"model": name, "evicted": True}

    def pin(self, name: str, pinned: bool) -> dict[str, Any]:
        name = normalize(name)
        self.cache = cache.set_pinned(self.cache, name, pinned)
        self._save_entry(name)
        return {"model": name, "pinned": pinned}

    def adapters(self) -> list[dict[str, Any]]:
        return [{"name": e.name, "resident": e.resident, "size": e.size, "size_measured": e.size_measured,
                 "last_used": e.last_used or None, "hits": e.hits, "pinned": e.pinned, "gpu": e.gpu}
                for e in sorted(self.cache.entries.values(), key=lambda e: (not e.resident, -e.last_used))]

    def may_load(self, need: int, snap: GpuSnapshot) -> bool:
        """While a lease is held, a load that would break it is not made."""
        return any(available(g, self.held(snap), self.config.gpu.reserve) >= need for g in snap.gpus)
