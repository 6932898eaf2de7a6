"""The GPU arbiter: owns the leases and the adapter cache, and carries out their plans against Ollama.

Every plan comes from a pure policy (policies/placement.py, policies/cache.py) over fresh snapshots; this class
only gathers the inputs, logs each decision with them, and acts: unload, confirm the VRAM is really free on
the GPU, grant; on release reload what was evicted and confirm it is resident. One lock serialises all of it,
so two plans never race for the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from memwarden.arbiter.attribution import locate
from memwarden.arbiter.leases import Lease, LeaseStore
from memwarden.arbiter.scheduler import ModelScheduling
from memwarden.config.schema import Config
from memwarden.gpu.simfile import pid_alive
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient, OllamaError, keep_alive_value, model_blob_path, normalize
from memwarden.ollama.service import ServiceControl, ServiceError
from memwarden.policies import cache
from memwarden.policies.placement import Held, Plan, Refusal, Resident, available, plan_lease
from memwarden.probes.runner import ProbeRunner
from memwarden.snapshots import Gpu, GpuSnapshot, LoadedModel
from memwarden.units import format_size, parse_keep_alive

log = get_logger()

# How often the GPU is re-read while waiting for evicted VRAM to show free: often at first (most runners let go
# within a second), then at Ollama's own 250 ms.
CONFIRM_POLL_FAST, CONFIRM_POLL, CONFIRM_FAST_FOR = 0.05, 0.25, 2.0
FOREVER_AFTER = 100 * 365 * 86400  # an expires_at further out than this means keep_alive < 0


class ArbiterError(Exception):
    """A request the arbiter refuses; the message says why in words a user can act on."""


class GpuArbiter(ModelScheduling):
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

    def _lease_pids(self, lease: Lease) -> tuple[int, ...]:
        if not lease.pid:
            return ()
        try:
            import psutil

            proc = psutil.Process(lease.pid)
            return (lease.pid, *(c.pid for c in proc.children(recursive=True)))
        except Exception:  # noqa: BLE001 - a vanished holder simply has no pids left
            return (lease.pid,)

    def held(self, snap: GpuSnapshot) -> list[Held]:
        """Active leases with what each may still allocate (size − what its processes already use)."""
        out = []
        for lease in self.leases.values():
            pids = self._lease_pids(lease)
            g = snap.gpu(lease.gpu)
            using = sum(p.used_bytes or 0 for p in (g.processes or ()) if p.pid in pids) if g else 0
            out.append(Held(lease.id, lease.holder, lease.gpu, lease.size, max(0, lease.size - using), pids))
        return out

    # ---- leases ----------------------------------------------------------------------------------------

    async def acquire(self, size: int, holder: str, pid: int | None = None, uid: int | None = None,
                      gpu: int | None = None, priority: int = 0, preemptible: bool = False,
                      wait: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        while True:
            async with self.lock:
                outcome = await self._try_grant(size, holder, pid, uid, gpu, priority, preemptible)
            if isinstance(outcome, Lease):
                return outcome.to_dict()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stats["refusals"] += 1
                raise ArbiterError(outcome.reason)
            # Something may change: a lease released, a model unloaded. Re-plan then, or every few seconds.
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(remaining, 5.0))

    async def _try_grant(self, size: int, holder: str, pid: int | None, uid: int | None, gpu: int | None,
                         priority: int, preemptible: bool) -> Lease | Refusal:
        if preemptible and time.monotonic() < self.serving_busy_until:
            return Refusal("serving has priority over preemptible leases: it must be idle for another "
                           f"{self.serving_busy_until - time.monotonic():.0f}s", ())
        snap = await self.gpu_snapshot()
        loaded = await self.loaded()
        if loaded is not None:
            await self.locate_models(loaded, snap)
            self.observe(loaded, snap)
        residents = self.residents(loaded)
        held = self.held(snap)
        reserve = self.config.gpu.reserve
        plan = plan_lease(size, snap.gpus, residents, held, reserve, gpu)
        log.info("decision: lease plan", decision="lease.plan", holder=holder, size=size, gpu_requested=gpu,
                 outcome="refuse" if isinstance(plan, Refusal) else "grant",
                 gpu=getattr(plan, "gpu", None), evict=list(getattr(plan, "evict", ())),
                 reason=getattr(plan, "reason", None), residents=[r.name for r in residents],
                 leases=[h.lease_id for h in held], ollama_reachable=loaded is not None,
                 dry_run=self.config.daemon.dry_run)
        if isinstance(plan, Refusal):
            return plan
        if self.config.daemon.dry_run and plan.evict:
            return Refusal(f"dry run: would evict {', '.join(plan.evict)} from GPU {plan.gpu}", ())
        lease = Lease(Lease.new_id(), holder, pid, uid, plan.gpu, size, priority, preemptible, "active",
                      self.clock())
        if plan.evict:
            confirmed = await self._evict_and_confirm(lease, plan, residents)
            if isinstance(confirmed, Refusal):
                return confirmed
        self.leases[lease.id] = lease
        self.store.save(lease)
        self.stats["grants"] += 1
        log.info("lease granted", lease=lease.id, holder=holder, gpu=lease.gpu, size=size,
                 evicted=[e["name"] for e in lease.evicted], escalated=lease.escalated)
        return lease

    async def _evict_and_confirm(self, lease: Lease, plan: Plan, residents: list[Resident]) -> Refusal | None:
        assert self.ollama is not None
        by_name = {r.name: r for r in residents}
        for name in plan.evict:
            try:
                await self.ollama.unload(name)
            except OllamaError as exc:
                log.warning("unload failed", model=name, error=str(exc))
                continue
            lease.evicted.append({"name": name, "size_vram": by_name[name].size_vram,
                                  "keep_alive": self.keep_alive.get(name, self.config.ollama.keep_alive),
                                  "evicted_at": self.clock()})
            self.cache = cache.evicted(self.cache, name, self.config.gpu.scheduler)
            self.stats["evictions"] += 1
        # Save before waiting: if the daemon dies now, the restart still knows what to reload.
        lease.state = "evicting"
        self.store.save(lease)
        runner_pids = {p for n in plan.evict for p in by_name[n].runner_pids}
        waited = await self._confirm_free(lease.gpu, lease.size, runner_pids, self.config.gpu.evict_timeout)
        if waited is None and self.config.gpu.escalate and self.service is not None:
            log.warning("evicted VRAM not free in time; stopping Ollama as configured", service=str(self.service))
            try:
                await self.service.stop()
                lease.escalated = True
                waited = await self._confirm_free(lease.gpu, lease.size, set(), self.config.gpu.evict_timeout)
            except ServiceError as exc:
                log.error("could not stop Ollama", error=str(exc))
        if waited is None:
            lease.state = "released"
            lease.release_reason = "evicted VRAM never showed free"
            await self._restore(lease)
            self.store.save(lease)
            snap = await self.gpu_snapshot()
            g = snap.gpu(lease.gpu)
            from memwarden.policies.placement import holders_on

            holders = holders_on(g, self.residents(await self.loaded()), self.held(snap)) if g else []
            return Refusal(f"evicted {', '.join(plan.evict)} but GPU {lease.gpu} did not free "
                           f"{format_size(lease.size)} within {self.config.gpu.evict_timeout:g}s; held by: "
                           f"{', '.join(holders) or 'nothing visible'}", tuple(holders))
        lease.state = "active"
        log.info("evicted VRAM confirmed free", lease=lease.id, gpu=lease.gpu, waited_s=round(waited, 3),
                 per_pid=bool(runner_pids))
        return None

    async def _confirm_free(self, index: int, size: int, runner_pids: set[int], timeout: float) -> float | None:
        """Seconds until `size` bytes are available on GPU `index` and the evicted runners are gone from it
        (per-PID where the driver tells), or None on time-out."""
        started = time.monotonic()
        while True:
            snap = await self.gpu.sample()
            g: Gpu | None = snap.gpu(index) if snap else None
            if g is not None:
                pids_gone = g.processes is None or not runner_pids & {p.pid for p in g.processes}
                if pids_gone and available(g, self.held(snap), self.config.gpu.reserve) >= size:
                    return time.monotonic() - started
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                return None
            await asyncio.sleep(CONFIRM_POLL_FAST if elapsed < CONFIRM_FAST_FOR else CONFIRM_POLL)

    async def release(self, lease_id: str, reason: str = "released by holder") -> dict[str, Any]:
        async with self.lock:
            lease = self.leases.pop(lease_id, None)
            if lease is None:
                raise ArbiterError(f"no active lease {lease_id!r} (see `memwardenctl lease list`)")
            lease.state = "released"
            lease.released_at = self.clock()
            lease.release_reason = reason
            self.store.save(lease)
            log.info("lease released", lease=lease.id, holder=lease.holder, reason=reason,
                     held_s=round(lease.released_at - lease.granted_at, 3))
            await self._restore(lease)
            self.store.save(lease)
        async with self.changed:
            self.changed.notify_all()
        return lease.to_dict()

    async def _restore(self, lease: Lease) -> None:
        """Reload what was evicted for `lease`, with its keep_alive, and check each is resident again."""
        if lease.escalated and self.service is not None:
            try:
                await self.service.start()
            except ServiceError as exc:
                log.error("could not start Ollama again", error=str(exc))
        if not lease.evicted or self.ollama is None:
            return
        snap = await self.gpu.sample()
        for ev in lease.evicted:
            name = ev["name"]
            record: dict[str, Any] = {"name": name, "ok": False}
            if snap is not None and not self._room_for(ev["size_vram"], lease.gpu, snap):
                record["error"] = "another lease now holds the room; it loads on next use"
                lease.restored.append(record)
                continue
            try:
                keep_alive = parse_keep_alive(ev["keep_alive"])
                await self.ollama.load(name, keep_alive_value(keep_alive))
                resident = any(normalize(m.name) == normalize(name) for m in await self.ollama.ps())
            except (OllamaError, ValueError) as exc:
                record["error"] = str(exc)
            else:
                record["ok"] = resident
                if not resident:
                    record["error"] = "loaded but not listed in /api/ps"
            record["restored_at"] = self.clock()
            record["downtime_s"] = round(record["restored_at"] - ev["evicted_at"], 3)
            lease.restored.append(record)
            log.info("model restored" if record["ok"] else "model not restored", model=name, lease=lease.id,
                     downtime_s=record["downtime_s"], error=record.get("error"))
        downs = [r["downtime_s"] for r in lease.restored if "downtime_s" in r]
        lease.downtime_s = max(downs) if downs else None

    def _room_for(self, nbytes: int, index: int, snap: GpuSnapshot) -> bool:
        g = snap.gpu(index)
        return g is None or available(g, self.held(snap), self.config.gpu.reserve) >= nbytes

    async def preempt(self, lease_id: str, reason: str = "serving needs the GPU") -> dict[str, Any]:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise ArbiterError(f"no active lease {lease_id!r}")
        if not lease.preemptible:
            raise ArbiterError(f"lease {lease_id} ({lease.holder}) is not preemptible")
        if lease.state != "preempting":
            lease.state = "preempting"
            self.store.save(lease)
            log.info("decision: preempt lease", decision="lease.preempt", lease=lease.id, holder=lease.holder,
                     reason=reason)
            async with self.changed:
                self.changed.notify_all()
        return lease.to_dict()

    async def watch(self, lease_id: str, timeout: float) -> dict[str, Any]:
        """Wait until the lease is asked to yield (preempting) or is gone; for holders to long-poll."""
        deadline = time.monotonic() + timeout

        def state() -> str:
            lease = self.leases.get(lease_id)
            return lease.state if lease else "released"

        async with self.changed:
            while state() == "active" and (remaining := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(self.changed.wait(), remaining)
                except TimeoutError:
                    break
        return {"id": lease_id, "state": state()}

    async def reap(self) -> list[str]:
        """Release the leases whose holder process has died (killed -9, crashed)."""
        dead = [lease.id for lease in list(self.leases.values()) if lease.pid and not pid_alive(lease.pid)]
        for lease_id in dead:
            log.warning("lease holder died; reclaiming its lease", lease=lease_id,
                        holder=self.leases[lease_id].holder, pid=self.leases[lease_id].pid)
            await self.release(lease_id, "holder died")
        return dead

    async def resume_interrupted(self) -> None:
        """After a restart: a lease that was still evicting when the daemon died is rolled back."""
        for lease in list(self.leases.values()):
            if lease.state == "evicting":
                self.leases.pop(lease.id)
                lease.state, lease.release_reason = "released", "daemon restarted while evicting"
                await self._restore(lease)
                self.store.save(lease)

    def list(self) -> list[dict[str, Any]]:
        return [lease.to_dict() for lease in sorted(self.leases.values(), key=lambda x: x.granted_at)]

    # ---- the adapter scheduler -------------------------------------------------------------------------
    # in scheduler.py (ModelScheduling): residency, room for a model, the bounded table of models.
