"""The model scheduler: which Ollama models are resident, and which to evict to make room for the next.

It shares the arbiter's lock, its inputs (arbiter/inputs.py) and the lease ledger's view of the GPU (a model
budget is what leases leave). What it records comes from requests (the proxy, `adapters load`), so every
record is checked first:
- only models Ollama has are tracked (its /api/tags, cached: ollama/installed.py), so junk names cost nothing;
- a keep_alive is stored only once it parses as Ollama's, in one spelling (`keep_alive_text`), so whatever is
  stored can be sent back on a restore or a load; a stored value that does not parse is dropped on load;
- the table holds at most `cache.MAX_ENTRIES` models, in memory and in SQLite (`cache.prune` says which go).

`ensure` plans once (policies/cache.plan_ensure: victims, load, the new state), logs the plan with its inputs,
carries it out, and commits the planned state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from memwarden.arbiter.errors import ArbiterError
from memwarden.arbiter.inputs import ArbiterInputs, listed
from memwarden.arbiter.ledger import LeaseLedger
from memwarden.arbiter.model_table import ModelTable
from memwarden.config.schema import Config
from memwarden.logs import get_logger
from memwarden.ollama.client import keep_alive_text, keep_alive_value, normalize, reported_load_seconds
from memwarden.ollama.installed import InstalledModels
from memwarden.policies import cache
from memwarden.snapshots import GpuSnapshot
from memwarden.units import format_size, parse_keep_alive

log = get_logger()

MODELS_PAGE = 1000  # models one `adapters` reply lists by default (resident first, then most recent)
NO_OLLAMA = "no Ollama configured (ollama.url is empty)"


class ModelScheduler:
    def __init__(self, inputs: ArbiterInputs, table: ModelTable, lock: asyncio.Lock, leases: LeaseLedger,
                 timer: Callable[[], float] = time.monotonic):
        self.inputs = inputs
        self.timer = timer  # times the loads Ollama reports no load_duration for: their seconds are the cost
        self.table = table
        self.lock = lock
        self.leases = leases
        self._dirty: set[str] = set()  # touched in memory since the last flush()
        self._pruned_against: frozenset[str] | None = None  # the installed list flush() last pruned against
        self._budgets: dict[int, int] = {}  # GPU index → model budget, as the last plan saw them
        self._max_resident = 0
        self.installed = InstalledModels(inputs.ollama) if inputs.ollama is not None else None
        self._prune(None)

    @property
    def config(self) -> Config:
        return self.inputs.config

    # ---- the record --------------------------------------------------------------------------------------

    def _save_entry(self, name: str) -> None:
        self.table.save(self.inputs.cache.entries[name], self.inputs.keep_alive.get(name))

    def _forget(self, names: Sequence[str], uninstalled: int, tracked: int) -> None:
        """Drop entries a plan or a prune let go: their keep_alive, their pending write and their row."""
        for name in names:
            self.inputs.keep_alive.pop(name, None)
            self._dirty.discard(name)
        self.table.delete(names)
        log.info("decision: forget models", decision="scheduler.forget", count=len(names),
                 uninstalled=uninstalled, max_entries=cache.MAX_ENTRIES, tracked=tracked,
                 first=list(names[:5]))

    def _prune(self, installed: frozenset[str] | None) -> None:
        pruned = cache.prune(self.inputs.cache, installed, cache.MAX_ENTRIES)
        if pruned.forgotten:
            self.inputs.cache = pruned.state
            self._forget(pruned.forgotten, pruned.uninstalled, len(pruned.state.entries))

    def note_keep_alive(self, name: str, keep_alive: object) -> None:
        """Record the keep_alive a request asked for; one that Ollama would refuse is not recorded."""
        try:
            self.inputs.keep_alive[name] = keep_alive_text(keep_alive)
        except ValueError as exc:
            log.info("keep_alive not recorded: Ollama refuses it", model=name, error=str(exc)[:200])

    def keep_alive_for(self, name: str) -> float:
        """Seconds to load `name` with: its recorded keep_alive, else ollama.keep_alive (validated at load)."""
        try:
            return parse_keep_alive(self.inputs.keep_alive_of(name))
        except ValueError:
            return parse_keep_alive(self.config.ollama.keep_alive)

    async def installed_size(self, name: str) -> int | None:
        """The size Ollama lists for `name`, or None when it does not have it (OllamaError: unreachable)."""
        if self.installed is None:
            return None
        return await self.installed.size_of(name)

    def resident(self, name: str) -> bool:
        entry = self.inputs.cache.entries.get(name)
        return bool(entry and entry.resident)

    def loads_freely(self, name: str) -> bool:
        """Whether loading `name` would evict nothing: its known size against the model budgets of the last plan
        and the models resident now. A hint for the proxy's queue, which admission checks by a plan of its own;
        False while the model or the budgets are unknown."""
        entry = self.inputs.cache.entries.get(name)
        if entry is None or entry.resident or not entry.size or not self._budgets:
            return False
        room = cache.plan_room_on(self.inputs.cache, name, cache.estimate_size(entry, None), self._budgets,
                                  self.config.gpu.scheduler, self._max_resident)
        return room.fits and not room.victims

    def note_use(self, name: str, keep_alive: str | None) -> None:
        """A served request for a resident model: an in-memory touch, written to SQLite by flush()."""
        inputs = self.inputs
        if name not in inputs.cache.entries:
            return  # only tracked (installed) models are counted
        inputs.cache = cache.touch(inputs.cache, name, inputs.clock())
        if keep_alive is not None:
            self.note_keep_alive(name, keep_alive)
        inputs.stats["hits"] += 1
        self._dirty.add(name)

    def note_answer(self, name: str, answer: object) -> None:
        """The final object of an answer Ollama gave for `name` (a generate or chat request that went past the
        scheduler, the proxy's): when the request loaded the model, its load_duration is the model's load time,
        the cost the eviction policy weighs. Only tracked models are recorded."""
        seconds = reported_load_seconds(answer)
        if seconds is None or name not in self.inputs.cache.entries:
            return
        self.inputs.cache = cache.note_load_time(self.inputs.cache, name, seconds)
        self._dirty.add(name)
        log.debug("model load time reported", model=name, seconds=round(seconds, 3),
                  learned=round(self.inputs.cache.entries[name].load_seconds, 3))

    def mark_resident(self, name: str) -> None:
        if name in self.inputs.cache.entries and not self.resident(name):
            self.inputs.cache = cache.set_resident(self.inputs.cache, name, True)

    def flush(self) -> None:
        """Each sample pass: write the touched entries, and forget what the table no longer needs."""
        for name in self._dirty:
            if name in self.inputs.cache.entries:
                self._save_entry(name)
        self._dirty.clear()
        installed = self.installed.names if self.installed is not None else None
        if installed is not self._pruned_against or len(self.inputs.cache.entries) > cache.MAX_ENTRIES:
            self._prune(installed)
            self._pruned_against = installed

    def max_loaded(self, snap: GpuSnapshot) -> int:
        """Ollama's OLLAMA_MAX_LOADED_MODELS as configured here; 0 there means 3 per GPU."""
        cap = self.config.ollama.max_loaded_models
        return cap if cap > 0 else 3 * max(1, len(snap.gpus))

    # ---- make resident, evict, pin, list -----------------------------------------------------------------

    async def ensure(self, name: str, keep_alive: object = None, load: bool = True) -> dict[str, Any]:
        """Make `name` resident: a hit when it already is; else evict by policy until it fits, then load.
        With load=False (the proxy) only make room: the request itself makes Ollama load it.
        Nothing is recorded for a model Ollama does not have, nor for a keep_alive it would refuse."""
        inputs = self.inputs
        if inputs.ollama is None:
            raise ArbiterError(NO_OLLAMA)
        name = normalize(name)
        if keep_alive is not None:
            try:
                keep_alive = keep_alive_text(keep_alive)
            except ValueError as exc:
                raise ArbiterError(f"keep_alive {str(keep_alive)[:64]!r} is not one Ollama accepts: {exc}") \
                    from None
        installed_size = await self.installed_size(name)
        if installed_size is None:
            raise ArbiterError(f"model {name[:200]!r} is not installed in Ollama")
        if keep_alive is not None:
            inputs.keep_alive[name] = keep_alive
        async with self.lock:
            now = inputs.clock()
            loaded = await inputs.ollama.ps()
            snap = await inputs.gpu_snapshot()
            await inputs.locate_models(loaded, snap)
            inputs.observe(loaded, snap)
            budgets = {g.index: self.leases.model_budget(snap, g.index) for g in snap.gpus}
            self._budgets, self._max_resident = budgets, self.max_loaded(snap)
            base = inputs.cache
            plan = cache.plan_ensure(base, name, now, listed=listed(loaded, name), installed_size=installed_size,
                                     budgets=budgets, policy=self.config.gpu.scheduler,
                                     max_resident=self.max_loaded(snap), load=load, max_entries=cache.MAX_ENTRIES)
            self._log_plan(plan, budgets, installed_size, loaded)
            return await self._carry_out(plan, base)

    def _log_plan(self, plan: cache.EnsurePlan, budgets: dict[int, int], installed_size: int,
                  loaded: Sequence[Any]) -> None:
        if plan.hit:
            return  # a hit changes nothing but the record of use: not a decision worth a line per request
        log.info("decision: make room", decision="scheduler.room", model=plan.name, need=plan.need,
                 installed_size=installed_size, policy=self.config.gpu.scheduler, victims=list(plan.victims),
                 fits=plan.fits, load=plan.load, gpu=plan.gpu, budget=plan.budget, used_after=plan.used_after,
                 budgets=budgets, resident=[m.name for m in loaded], dry_run=self.config.daemon.dry_run)

    async def _carry_out(self, plan: cache.EnsurePlan, base: cache.CacheState) -> dict[str, Any]:
        """Act on the plan (the lock held), then commit the state it planned; only what was decided is done."""
        inputs, name = self.inputs, plan.name
        assert inputs.ollama is not None
        if plan.forgotten:  # already gone from the planned states; their keep_alives and rows go now
            self._forget(plan.forgotten, 0, len(plan.noted.entries))
        if plan.hit:
            inputs.stats["hits"] += 1
            self._commit(base, plan.state_after, name)
            return {"model": name, "hit": True, "evicted": [], "loaded": False}
        inputs.stats["misses"] += 1
        if not plan.fits:
            self._commit(base, plan.noted, name)
            raise ArbiterError(
                f"{name} needs {format_size(plan.need)} but only {format_size(plan.shortfall)} of the "
                f"{format_size(plan.budget)} model budget can be freed (pinned models and leases hold the rest)")
        if self.config.daemon.dry_run:
            self._commit(base, plan.noted, None)
            return {"model": name, "hit": False, "evicted": [], "would_evict": list(plan.victims), "loaded": False}
        try:
            for victim in plan.victims:
                await inputs.ollama.unload(victim)
                inputs.stats["evictions"] += 1
            if plan.victims:
                await self.leases.confirm_free(plan.gpu, plan.need, set(), self.config.gpu.evict_timeout)
            load_seconds = 0.0
            if plan.load:
                started = self.timer()
                reported = await inputs.ollama.load(name, keep_alive_value(self.keep_alive_for(name)))
                load_seconds = reported or self.timer() - started
        except BaseException:
            # Only part of the plan happened: keep the request's record; residency is read again next pass.
            self._commit(base, plan.noted, None)
            raise
        self._commit(base, plan.state_after, None)
        inputs.cache = cache.note_load_time(inputs.cache, name, load_seconds)
        self._save_entry(name)
        return {"model": name, "hit": False, "evicted": list(plan.victims), "loaded": plan.load}

    def _commit(self, base: cache.CacheState, planned: cache.CacheState, save: str | None) -> None:
        self.inputs.cache = cache.commit(self.inputs.cache, base, planned)
        if save is not None:
            self._save_entry(save)

    async def evict(self, name: str) -> dict[str, Any]:
        inputs = self.inputs
        if inputs.ollama is None:
            raise ArbiterError(NO_OLLAMA)
        name = normalize(name)
        async with self.lock:
            await inputs.ollama.unload(name)
            if name in inputs.cache.entries:
                inputs.cache = cache.evicted(inputs.cache, name, self.config.gpu.scheduler)
        return {"model": name, "evicted": True}

    async def pin(self, name: str, pinned: bool) -> dict[str, Any]:
        """Pin a model Ollama has (or one already tracked); unpinning an untracked name changes nothing."""
        name = normalize(name)
        if name not in self.inputs.cache.entries:
            if not pinned:
                return {"model": name, "pinned": False}
            if self.installed is None:
                raise ArbiterError(NO_OLLAMA)
            if await self.installed_size(name) is None:
                raise ArbiterError(f"model {name[:200]!r} is not installed in Ollama")
        self.inputs.cache = cache.set_pinned(self.inputs.cache, name, pinned)
        self._save_entry(name)
        if len(self.inputs.cache.entries) > cache.MAX_ENTRIES:
            self._prune(None)
        return {"model": name, "pinned": pinned}

    def models(self, limit: int = MODELS_PAGE) -> list[dict[str, Any]]:
        """Up to `limit` models: resident first, then the most recently used."""
        order = sorted(self.inputs.cache.entries.values(), key=lambda e: (not e.resident, -e.last_used, e.name))
        return [{"name": e.name, "resident": e.resident, "size": e.size, "size_measured": e.size_measured,
                 "load_seconds": round(cache.load_time(e), 3), "load_measured": e.load_seconds > 0,
                 "last_used": e.last_used or None, "hits": e.hits, "pinned": e.pinned, "gpu": e.gpu}
                for e in order[:limit]]
