"""The lease ledger: VRAM promised to holders. Grant (plan, evict, confirm free), release (restore), preempt,
watch, reap.

The ledger must never lie, so:
- A lease lasts while any of its processes runs (policies/lease_procs.py): its holder, everything the holder
  started, and the process groups they lead. The holder dying (even `kill -9`) does not end it while its
  command still holds memory; it is reclaimed when the last of them is gone.
- A process's VRAM counts once, in its innermost lease, so nested leases do not overbook the GPU.
- A grant whose caller goes away (its task is cancelled: the client hung up) is rolled back: what was evicted for
  it is reloaded and no lease is left without a holder. A release, once begun, always finishes its restore.
- Models come back one at a time, each confirmed (restoring.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from memwarden.arbiter import processes
from memwarden.arbiter.errors import ArbiterError
from memwarden.arbiter.inputs import ArbiterInputs
from memwarden.arbiter.leases import Lease, LeaseStore
from memwarden.arbiter.restoring import Restorer
from memwarden.config.schema import Config
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaError
from memwarden.ollama.service import ServiceControl, ServiceError
from memwarden.policies.lease_procs import LeaseProcs, Proc, attribute, track
from memwarden.policies.placement import (
    GpuBudget,
    Held,
    Plan,
    Refusal,
    Resident,
    available,
    gpu_budgets,
    holders_on,
    model_budget,
    plan_lease,
)
from memwarden.snapshots import Gpu, GpuSnapshot
from memwarden.units import format_size

log = get_logger()
T = TypeVar("T")

# How often the GPU is re-read while waiting for evicted VRAM to show free: often at first (most runners let go
# within a second), then at Ollama's own 250 ms.
CONFIRM_POLL_FAST, CONFIRM_POLL, CONFIRM_FAST_FOR = 0.05, 0.25, 2.0
ABANDONED = "the client went away before the lease was granted"


async def uninterrupted(work: Awaitable[T]) -> T:
    """Run `work` to its end even when the caller is cancelled meanwhile (its client hung up): a grant or a
    restore stopped halfway would leave models evicted for nobody. The cancellation is raised once it is done."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


class LeaseLedger:
    """The active leases (in memory and in LeaseStore), under the arbiter's one lock."""

    def __init__(self, inputs: ArbiterInputs, store: LeaseStore, lock: asyncio.Lock,
                 service: ServiceControl | None = None):
        self.inputs = inputs
        self.store = store
        self.lock = lock
        self.service = service
        self.leases: dict[str, Lease] = {lease.id: lease for lease in store.active()}
        self.changed = asyncio.Condition()  # notified when a lease ends or is asked to yield
        # Preemptible leases wait until serving has been idle (proxy.preempt). On the monotonic clock: a wall
        # clock stepped back must not hold training back for as long as the step.
        self.serving_busy_until = 0.0
        self._orphaned: set[str] = set()  # leases whose holder died while their processes run (logged once)
        self._restorer = Restorer(inputs, store, self.held, service)

    @property
    def config(self) -> Config:
        return self.inputs.config

    # ---- the GPU as leases see it ----------------------------------------------------------------------

    def held(self, snap: GpuSnapshot) -> list[Held]:
        """Active leases with what each may still allocate (size − what its processes already use)."""
        ordered = sorted(self.leases.values(), key=lambda x: x.granted_at)
        trees = [(lease.id, procs) for lease in ordered if (procs := lease.procs()) is not None]
        gpu_pids = {p.pid for g in snap.gpus for p in g.processes or ()}
        owner = attribute(gpu_pids, processes.lineage(gpu_pids, self.inputs.proc_root), trees) if trees else {}
        out = []
        for lease in ordered:
            g = snap.gpu(lease.gpu)
            mine = [p for p in (g.processes or ()) if owner.get(p.pid) == lease.id] if g else []
            using = sum(p.used_bytes or 0 for p in mine)
            pids = tuple(p.pid for p in mine) + ((lease.pid,) if lease.pid else ())
            out.append(Held(lease.id, lease.holder, lease.gpu, lease.size, max(0, lease.size - using), pids))
        return out

    def model_budget(self, snap: GpuSnapshot, index: int) -> int:
        """VRAM the scheduler may fill with models on GPU `index`: total − reserve − leases."""
        g = snap.gpu(index)
        if g is None:
            return 0
        leased = sum(lease.size for lease in self.leases.values() if lease.gpu == index)
        return model_budget(g, leased, self.config.gpu.reserve)

    def gpu_view(self, snap: GpuSnapshot) -> tuple[GpuBudget, ...]:
        """Each GPU's leasable bytes and model budget, in the snapshot's order."""
        return gpu_budgets(snap.gpus, self.held(snap), self.config.gpu.reserve)

    def active(self) -> list[dict[str, Any]]:
        """The active leases, oldest first, as the `lease.list` reply shows them."""
        return [lease.to_dict() for lease in sorted(self.leases.values(), key=lambda x: x.granted_at)]

    # ---- which processes are whose -------------------------------------------------------------------

    def _track(self, lease: Lease, table: dict[int, Proc]) -> LeaseProcs | None:
        procs = lease.procs()
        if procs is None:
            return None
        procs = track(procs, table)
        if lease.set_procs(procs) and lease.id in self.leases:
            self.store.save(lease)
        if not procs.holder_alive and procs.members and lease.id not in self._orphaned:
            self._orphaned.add(lease.id)
            log.warning("lease holder died; the lease is kept while its processes run", lease=lease.id,
                        holder=lease.holder, pid=lease.pid, running=sorted(procs.pids()))
        return procs

    async def refresh(self, lease_id: str) -> None:
        """Record the lease's processes now (the holder calls this before its command may start anything)."""
        lease = self.leases.get(lease_id)
        if lease is not None and lease.pid:
            self._track(lease, await asyncio.to_thread(processes.scan, self.inputs.proc_root))

    # ---- grant -----------------------------------------------------------------------------------------

    async def acquire(self, size: int, holder: str, pid: int | None = None, uid: int | None = None,
                      gpu: int | None = None, priority: int = 0, preemptible: bool = False,
                      wait: float = 0.0) -> dict[str, Any]:
        """Grant a lease, waiting up to `wait` seconds for room. Cancelled while waiting: nothing is granted;
        cancelled during a grant: it is rolled back (see try_grant)."""
        deadline = time.monotonic() + wait
        while True:
            async with self.lock:
                outcome = await self.try_grant(size, holder, pid, uid, gpu, priority, preemptible)
            if isinstance(outcome, Lease):
                return outcome.to_dict()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or outcome.never:
                self.inputs.stats["refusals"] += 1
                raise ArbiterError(outcome.reason, outcome.holders)
            # Something may change: a lease released, a model unloaded. Re-plan then, or every few seconds.
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(remaining, 5.0))

    async def try_grant(self, size: int, holder: str, pid: int | None, uid: int | None, gpu: int | None,
                        priority: int, preemptible: bool) -> Lease | Refusal:
        """One attempt, the lock held by the caller: plan over fresh reads, evict, confirm, record."""
        if preemptible and time.monotonic() < self.serving_busy_until:
            return Refusal("serving has priority over preemptible leases: it must be idle for another "
                           f"{self.serving_busy_until - time.monotonic():.0f}s", ())
        inputs = self.inputs
        snap = await inputs.gpu_snapshot()
        loaded = await inputs.loaded()
        if loaded is not None:
            await inputs.locate_models(loaded, snap)
            inputs.observe(loaded, snap)
        residents = inputs.residents(loaded)
        held = self.held(snap)
        plan = plan_lease(size, snap.gpus, residents, held, self.config.gpu.reserve, gpu)
        log.info("decision: lease plan", decision="lease.plan", holder=holder, size=size, gpu_requested=gpu,
                 outcome="refuse" if isinstance(plan, Refusal) else "grant",
                 gpu=getattr(plan, "gpu", None), evict=list(getattr(plan, "evict", ())),
                 reason=getattr(plan, "reason", None), residents=[r.name for r in residents],
                 leases=[h.lease_id for h in held], outstanding=[h.outstanding for h in held],
                 ollama_reachable=loaded is not None, dry_run=self.config.daemon.dry_run)
        if isinstance(plan, Refusal):
            return plan
        if self.config.daemon.dry_run and plan.evict:
            return Refusal(f"dry run: would evict {', '.join(plan.evict)} from GPU {plan.gpu}", ())
        holder_proc = processes.read(pid, inputs.proc_root) if pid else None
        lease = Lease(Lease.new_id(), holder, pid, uid, plan.gpu, size, priority, preemptible, "active",
                      inputs.clock(), holder_start=holder_proc.start if holder_proc else None)
        if plan.evict:
            try:
                confirmed = await self._evict_and_confirm(lease, plan, residents)
            except asyncio.CancelledError:
                await uninterrupted(self._roll_back(lease, ABANDONED))
                raise
            if isinstance(confirmed, Refusal):
                return confirmed
        self.leases[lease.id] = lease
        self.store.save(lease)
        inputs.stats["grants"] += 1
        log.info("lease granted", lease=lease.id, holder=holder, pid=pid, uid=uid, gpu=lease.gpu, size=size,
                 evicted=[e["name"] for e in lease.evicted], escalated=lease.escalated)
        return lease

    async def _evict_and_confirm(self, lease: Lease, plan: Plan, residents: list[Resident]) -> Refusal | None:
        inputs = self.inputs
        assert inputs.ollama is not None
        by_name = {r.name: r for r in residents}
        lease.state = "evicting"
        for name in plan.evict:
            # Recorded before the call: if the grant is abandoned mid-unload, the rollback reloads it.
            lease.evicted.append({"name": name, "size_vram": by_name[name].size_vram,
                                  "keep_alive": inputs.keep_alive_of(name), "evicted_at": inputs.clock()})
            try:
                await inputs.ollama.unload(name)
            except OllamaError as exc:
                lease.evicted.pop()
                log.warning("unload failed", model=name, error=str(exc))
                continue
            inputs.note_evicted(name)
        # Saved before waiting: if the daemon dies now, the restart still knows what to reload.
        self.store.save(lease)
        runner_pids = {p for n in plan.evict for p in by_name[n].runner_pids}
        timeout = self.config.gpu.evict_timeout
        waited = await self.confirm_free(lease.gpu, lease.size, runner_pids, timeout)
        if waited is None and self.config.gpu.escalate and self.service is not None:
            log.warning("evicted VRAM not free in time; stopping Ollama as configured", service=str(self.service))
            lease.escalated = True  # set first: a grant abandoned mid-stop still starts Ollama again
            try:
                await self.service.stop()
                waited = await self.confirm_free(lease.gpu, lease.size, set(), timeout)
            except ServiceError as exc:
                lease.escalated = False
                log.error("could not stop Ollama", error=str(exc))
        if waited is None:
            await self._roll_back(lease, "evicted VRAM never showed free")
            snap = await inputs.gpu_snapshot()
            g = snap.gpu(lease.gpu)
            holders = holders_on(g, inputs.residents(await inputs.loaded()), self.held(snap)) if g else []
            return Refusal(f"evicted {', '.join(plan.evict)} but GPU {lease.gpu} did not free "
                           f"{format_size(lease.size)} within {timeout:g}s (gpu.evict_timeout); held by: "
                           f"{', '.join(holders) or 'nothing memwarden can name'}; the models were reloaded. "
                           "Raise gpu.evict_timeout" + ("" if self.config.gpu.escalate else
                                                        ", or set gpu.escalate (and ollama.service) to restart "
                                                        "Ollama as a last resort"), tuple(holders))
        lease.state = "active"
        log.info("evicted VRAM confirmed free", lease=lease.id, gpu=lease.gpu, waited_s=round(waited, 3),
                 per_pid=bool(runner_pids))
        return None

    async def _roll_back(self, lease: Lease, reason: str) -> None:
        """A grant that will not complete: record it released and reload what was evicted for it."""
        lease.state, lease.released_at, lease.release_reason = "released", self.inputs.clock(), reason
        self.store.save(lease)
        log.warning("lease not granted; rolling back its evictions", lease=lease.id, holder=lease.holder,
                    reason=reason, evicted=[e["name"] for e in lease.evicted])
        await self._restorer.restore(lease)
        self.store.save(lease)
        async with self.changed:
            self.changed.notify_all()

    async def confirm_free(self, index: int, size: int, runner_pids: set[int], timeout: float) -> float | None:
        """Seconds until `size` bytes are available on GPU `index` and the evicted runners are gone from it
        (per-PID where the driver tells), or None on time-out."""
        started = time.monotonic()
        while True:
            snap = await self.inputs.gpu.sample()
            g: Gpu | None = snap.gpu(index) if snap else None
            if g is not None:
                pids_gone = g.processes is None or not runner_pids & {p.pid for p in g.processes}
                if pids_gone and available(g, self.held(snap), self.config.gpu.reserve) >= size:
                    return time.monotonic() - started
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                return None
            await asyncio.sleep(CONFIRM_POLL_FAST if elapsed < CONFIRM_FAST_FOR else CONFIRM_POLL)

    # ---- release and restore ---------------------------------------------------------------------------

    async def release(self, lease_id: str, reason: str = "released by holder") -> dict[str, Any]:
        """End a lease and reload what was evicted for it; once begun, it finishes even if the caller goes."""
        return await uninterrupted(self._release(lease_id, reason))

    async def _release(self, lease_id: str, reason: str) -> dict[str, Any]:
        async with self.lock:
            lease = self.leases.pop(lease_id, None)
            if lease is None:
                raise ArbiterError(f"no active lease {lease_id!r} (see `memwardenctl lease list`)")
            self._orphaned.discard(lease_id)
            lease.state = "released"
            lease.released_at = self.inputs.clock()
            lease.release_reason = reason
            self.store.save(lease)
            log.info("lease released", lease=lease.id, holder=lease.holder, reason=reason,
                     held_s=round(lease.released_at - lease.granted_at, 3))
            await self._restorer.restore(lease)
            self.store.save(lease)
        async with self.changed:
            self.changed.notify_all()
        return lease.to_dict()

    # ---- preempt, watch, reap --------------------------------------------------------------------------

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
        """Release the leases none of whose processes is left: the holder died (killed -9, crashed) and so did
        everything it started."""
        tracked = [lease for lease in self.leases.values() if lease.pid]
        if not tracked:
            return []
        table = await asyncio.to_thread(processes.scan, self.inputs.proc_root)
        gone = []
        for lease in tracked:
            procs = self._track(lease, table) if lease.id in self.leases else None
            if procs is not None and not procs.remaining:
                gone.append(lease)
        for lease in gone:
            if lease.id in self.leases:
                log.warning("lease holder and its processes are gone; reclaiming its lease", lease=lease.id,
                            holder=lease.holder, pid=lease.pid)
                with contextlib.suppress(ArbiterError):  # released meanwhile by its owner
                    await self.release(lease.id, "holder died")
        return [lease.id for lease in gone]

    async def resume_interrupted(self) -> None:
        """After a restart: a lease that was still evicting when the daemon died is rolled back."""
        for lease in list(self.leases.values()):
            if lease.state == "evicting":
                self.leases.pop(lease.id)
                await self._roll_back(lease, "daemon restarted while evicting")
