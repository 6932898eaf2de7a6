"""The model scheduler: which Ollama models are resident, and which to evict to make room for the next.

GpuArbiter mixes it in; both halves share the arbiter's lock, GPU probe and Ollama client. What it records
comes from requests (the proxy, `adapters load`), so every record is checked first:
- only models Ollama has are tracked (its /api/tags, cached: ollama/installed.py), so junk names cost nothing;
- a keep_alive is stored only once it parses as Ollama's, in one spelling (`keep_alive_text`), so whatever is
  stored can be sent back on a restore or a load; a stored value that does not parse is dropped on load;
- the table holds at most `cache.MAX_ENTRIES` models, in memory and in SQLite (`cache.prune` says which go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from memwarden.logs import get_logger
from memwarden.ollama.client import keep_alive_text, keep_alive_value, normalize
from memwarden.ollama.installed import InstalledModels
from memwarden.policies import cache
from memwarden.units import format_size, parse_keep_alive

if TYPE_CHECKING:
    from memwarden.snapshots import GpuSnapshot

log = get_logger()

ADAPTERS_PAGE = 1000  # models one `adapters` reply lists by default (resident first, then most recent)


def _refusal(message: str) -> Exception:
    """An ArbiterError (arbiter.py imports this module, so the name is looked up when a refusal is made)."""
    from memwarden.arbiter.arbiter import ArbiterError

    return ArbiterError(message)


class ModelTable:
    """The one owner of the `adapters` table: the scheduler's record of each model."""

    def __init__(self, db: Any):
        self.table = db["adapters"]

    def load(self) -> tuple[list[cache.Entry], dict[str, str]]:
        """The stored entries, and their keep_alives that still parse (one that does not is dropped, logged)."""
        entries, keep_alive = [], {}
        for row in self.table.rows:
            entries.append(cache.Entry(row["name"], row["size"] or 0, bool(row["size_measured"]), False,
                                       bool(row["pinned"]), row["last_used"] or 0.0, row["hits"] or 0))
            if row["keep_alive"] is not None:
                try:
                    keep_alive[row["name"]] = keep_alive_text(row["keep_alive"])
                except ValueError as exc:
                    log.warning("stored keep_alive ignored: it does not parse", model=row["name"],
                                keep_alive=str(row["keep_alive"])[:64], error=str(exc)[:200])
        return entries, keep_alive

    def save(self, entry: cache.Entry, keep_alive: str | None) -> None:
        self.table.upsert({"name": entry.name, "pinned": int(entry.pinned), "size": entry.size,
                           "size_measured": int(entry.size_measured), "last_used": entry.last_used,
                           "hits": entry.hits, "keep_alive": keep_alive}, pk="name")

    def delete(self, names: Iterable[str]) -> None:
        batch = list(names)
        for i in range(0, len(batch), 500):  # SQLite's bound-parameter limit
            part = batch[i:i + 500]
            self.table.delete_where(f"name IN ({', '.join('?' * len(part))})", part)


class ModelScheduling:
    """The scheduler half of GpuArbiter (see the module docstring); the arbiter provides the attributes below."""

    config: Any
    ollama: Any
    leases: Mapping[str, Any]
    lock: Any
    stats: dict[str, int]
    clock: Any
    cache: cache.CacheState
    keep_alive: dict[str, str]  # model → its keep_alive, valid and in keep_alive_text's spelling
    installed: InstalledModels | None
    table: ModelTable
    _dirty: set[str]
    # and: gpu_snapshot(), locate_models(), observe(), _confirm_free()

    def _init_scheduler(self, db: Any) -> None:
        self.table = ModelTable(db)
        self._dirty = set()
        self._pruned_against: frozenset[str] | None = None  # the installed list flush() last pruned against
        self.installed = InstalledModels(self.ollama) if self.ollama is not None else None
        self.cache = self._load_cache()
        self._prune(None)

    def _load_cache(self) -> cache.CacheState:
        entries, self.keep_alive = self.table.load()
        return cache.CacheState.of(entries)

    def _save_entry(self, name: str) -> None:
        self.table.save(self.cache.entries[name], self.keep_alive.get(name))

    def _prune(self, installed: frozenset[str] | None) -> None:
        pruned = cache.prune(self.cache, installed, cache.MAX_ENTRIES)
        if not pruned.forgotten:
            return
        self.cache = pruned.state
        for name in pruned.forgotten:
            self.keep_alive.pop(name, None)
            self._dirty.discard(name)
        self.table.delete(pruned.forgotten)
        log.info("decision: forget models", decision="scheduler.forget", count=len(pruned.forgotten),
                 uninstalled=pruned.uninstalled, max_entries=cache.MAX_ENTRIES, tracked=len(self.cache.entries),
                 first=list(pruned.forgotten[:5]))

    def note_keep_alive(self, name: str, keep_alive: object) -> None:
        """Record the keep_alive a request asked for; one that Ollama would refuse is not recorded."""
        try:
            self.keep_alive[name] = keep_alive_text(keep_alive)
        except ValueError as exc:
            log.info("keep_alive not recorded: Ollama refuses it", model=name, error=str(exc)[:200])

    def keep_alive_for(self, name: str) -> float:
        """Seconds to load `name` with: its recorded keep_alive, else ollama.keep_alive (validated at load)."""
        try:
            return parse_keep_alive(self.keep_alive.get(name, self.config.ollama.keep_alive))
        except ValueError:
            return parse_keep_alive(self.config.ollama.keep_alive)

    async def installed_size(self, name: str) -> int | None:
        """The size Ollama lists for `name`, or None when it does not have it (OllamaError: unreachable)."""
        if self.installed is None:
            return None
        return await self.installed.size_of(name)

    def resident(self, name: str) -> bool:
        entry = self.cache.entries.get(name)
        return bool(entry and entry.resident)

    def note_use(self, name: str, keep_alive: str | None) -> None:
        """A served request for a resident model: an in-memory touch, written to SQLite by flush()."""
        if name not in self.cache.entries:
            return  # only tracked (installed) models are counted
        self.cache = cache.touch(self.cache, name, self.clock())
        if keep_alive is not None:
            self.note_keep_alive(name, keep_alive)
        self.stats["hits"] += 1
        self._dirty.add(name)

    def mark_resident(self, name: str) -> None:
        if name in self.cache.entries and not self.resident(name):
            self.cache = cache.set_resident(self.cache, name, True)

    def flush(self) -> None:
        """Each sample pass: write the touched entries, and forget what the table no longer needs."""
        for name in self._dirty:
            if name in self.cache.entries:
                self._save_entry(name)
        self._dirty.clear()
        installed = self.installed.names if self.installed is not None else None
        if installed is not self._pruned_against or len(self.cache.entries) > cache.MAX_ENTRIES:
            self._prune(installed)
            self._pruned_against = installed

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

    async def ensure(self, name: str, keep_alive: object = None, load: bool = True) -> dict[str, Any]:
        """Make `name` resident: a hit when it already is; else evict by policy until it fits, then load.
        With load=False (the proxy) only make room: the request itself makes Ollama load it.
        Nothing is recorded for a model Ollama does not have, nor for a keep_alive it would refuse."""
        if self.ollama is None:
            raise _refusal("no Ollama configured (ollama.url is empty)")
        name = normalize(name)
        if keep_alive is not None:
            try:
                keep_alive = keep_alive_text(keep_alive)
            except ValueError as exc:
                raise _refusal(f"keep_alive {str(keep_alive)[:64]!r} is not one Ollama accepts: {exc}") from None
        installed_size = await self.installed_size(name)
        if installed_size is None:
            raise _refusal(f"model {name[:200]!r} is not installed in Ollama")
        if keep_alive is not None:
            self.keep_alive[name] = keep_alive
        async with self.lock:
            now = self.clock()
            loaded = await self.ollama.ps()
            snap = await self.gpu_snapshot()
            await self.locate_models(loaded, snap)
            self.observe(loaded, snap)
            self.cache = cache.touch(self.cache, name, now)
            if len(self.cache.entries) > cache.MAX_ENTRIES:
                self._prune(None)
            if any(normalize(m.name) == name for m in loaded):
                self.stats["hits"] += 1
                self._save_entry(name)
                return {"model": name, "hit": True, "evicted": [], "loaded": False}
            self.stats["misses"] += 1
            need = self.estimate(name, installed_size)
            self.cache = cache.set_resident(self.cache, name, False, need)
            room = self._plan_room(name, need, snap)
            log.info("decision: make room", decision="scheduler.room", model=name, need=need,
                     policy=self.config.gpu.scheduler, victims=list(room.victims), fits=room.fits,
                     budget=room.budget, used_after=room.used_after, dry_run=self.config.daemon.dry_run)
            if not room.fits:
                self._save_entry(name)
                raise _refusal(
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
                await self.ollama.load(name, keep_alive_value(self.keep_alive_for(name)))
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
            raise _refusal("no Ollama configured (ollama.url is empty)")
        name = normalize(name)
        async with self.lock:
            await self.ollama.unload(name)
            if name in self.cache.entries:
                self.cache = cache.evicted(self.cache, name, self.config.gpu.scheduler)
        return {"model": name, "evicted": True}

    async def pin(self, name: str, pinned: bool) -> dict[str, Any]:
        """Pin a model Ollama has (or one already tracked); unpinning an untracked name changes nothing."""
        name = normalize(name)
        if name not in self.cache.entries:
            if not pinned:
                return {"model": name, "pinned": False}
            if self.installed is None:
                raise _refusal("no Ollama configured (ollama.url is empty)")
            if await self.installed_size(name) is None:
                raise _refusal(f"model {name[:200]!r} is not installed in Ollama")
        self.cache = cache.set_pinned(self.cache, name, pinned)
        self._save_entry(name)
        if len(self.cache.entries) > cache.MAX_ENTRIES:
            self._prune(None)
        return {"model": name, "pinned": pinned}

    def adapters(self, limit: int = ADAPTERS_PAGE) -> list[dict[str, Any]]:
        """Up to `limit` models: resident first, then the most recently used."""
        order = sorted(self.cache.entries.values(), key=lambda e: (not e.resident, -e.last_used, e.name))
        return [{"name": e.name, "resident": e.resident, "size": e.size, "size_measured": e.size_measured,
                 "last_used": e.last_used or None, "hits": e.hits, "pinned": e.pinned, "gpu": e.gpu}
                for e in order[:limit]]
