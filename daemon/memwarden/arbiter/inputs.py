"""What the lease ledger and the model scheduler both plan from: the GPU snapshot, Ollama's /api/ps, which GPU
each model's runner sits on, and the residency record those reads keep up to date.

Both parts hold the same ArbiterInputs, so a config reload or a test's clock reaches both at once, and a model
evicted for a lease is known to the scheduler as soon as it is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from memwarden.arbiter.attribution import locate
from memwarden.arbiter.errors import ArbiterError
from memwarden.config.schema import Config
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient, OllamaError, model_blob_path, normalize
from memwarden.policies import cache
from memwarden.policies.placement import Resident
from memwarden.probes.runner import ProbeRunner
from memwarden.snapshots import GpuSnapshot, LoadedModel

log = get_logger()

FOREVER_AFTER = 100 * 365 * 86400  # an expires_at further out than this means keep_alive < 0


def new_stats() -> dict[str, int]:
    """The arbiter's counters (the `gpu` reply and /metrics show them by these names)."""
    return {"hits": 0, "misses": 0, "evictions": 0, "grants": 0, "refusals": 0}


def listed(loaded: Iterable[LoadedModel], name: str) -> bool:
    """Is `name` among the models /api/ps lists (names compared as Ollama spells them)?"""
    wanted = normalize(name)
    return any(normalize(m.name) == wanted for m in loaded)


class ArbiterInputs:
    def __init__(self, config: Config, gpu: ProbeRunner, ollama: OllamaClient | None,
                 clock: Callable[[], float] = time.time, proc_root: Path = Path("/proc"),
                 models: cache.CacheState | None = None, keep_alive: dict[str, str] | None = None):
        self.config = config
        self.gpu = gpu
        self.ollama = ollama
        self.clock = clock
        self.proc_root = proc_root
        self.cache = models if models is not None else cache.CacheState()
        self.keep_alive: dict[str, str] = keep_alive or {}  # model → keep_alive, in keep_alive_text's spelling
        self.blobs: dict[str, str] = {}  # model → weights path, from /api/show
        self.located: dict[str, tuple[int, tuple[int, ...]]] = {}  # model → (GPU, runner pids)
        self.stats = new_stats()

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

    def keep_alive_of(self, name: str) -> str:
        """The keep_alive `name` was last asked for, else the configured default."""
        return self.keep_alive.get(name, self.config.ollama.keep_alive)

    def note_evicted(self, name: str) -> None:
        """`name` was unloaded to make room (for a model or a lease)."""
        if name in self.cache.entries:
            self.cache = cache.evicted(self.cache, name, self.config.gpu.scheduler)
        self.stats["evictions"] += 1

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
            entry = self.cache.entries.get(name)
            gpu, pids = self.located.get(name, (None, ()))
            if gpu is None:
                gpu = entry.gpu if entry else None
            out.append(Resident(name, m.size_vram, gpu, bool(entry and entry.pinned), pids))
        return out

