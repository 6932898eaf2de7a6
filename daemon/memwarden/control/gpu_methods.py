"""RPC methods of the GPU arbiter: the GPU view, leases and the scheduler of Ollama models (`models.*`)."""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING, Any

from memwarden.arbiter import processes
from memwarden.arbiter.errors import ArbiterError
from memwarden.arbiter.leases import Lease, may_manage
from memwarden.arbiter.scheduler import MODELS_PAGE
from memwarden.control.params import bool_param, duration_param, int_param, size_param, str_param
from memwarden.control.protocol import PERMISSION_DENIED, InvalidParams, RpcError, refusals
from memwarden.control.registry import Registry
from memwarden.ollama.client import OllamaError, keep_alive_text
from memwarden.policies import cache

if TYPE_CHECKING:
    from memwarden.control.peer import Peer
    from memwarden.services import Services

MAX_LEASE_WAIT = 24 * 3600.0  # lease.acquire's `wait`: a longer one is refused
MAX_WATCH = 3600.0  # lease.watch's `timeout`: a longer one returns at this bound (the holder polls again)


REFUSALS = (ArbiterError, OllamaError)  # what the arbiter and Ollama refuse, in words for the caller


def _owner(uid: int | None) -> str:
    if uid is None:
        return "the daemon"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check_owner(lease: Lease | None, peer: Peer | None, verb: str) -> None:
    """Only the owner, root or the daemon's own uid may end or preempt a lease (see leases.may_manage)."""
    if lease is None or peer is None or may_manage(lease, peer.uid, os.getuid()):
        return
    raise RpcError(PERMISSION_DENIED, f"permission denied: lease {lease.id} ({lease.holder}) belongs to "
                                      f"{_owner(lease.uid)}; only its owner or root may {verb} it")


def register_gpu(reg: Registry, s: Services) -> None:

    def arbiter():
        return s.arbiter

    async def gpu() -> dict[str, Any]:
        """Each GPU's VRAM, temperature, processes and model budget; the Ollama view; leases."""
        snap = s.readings.gpu
        runner = s.runners["gpu"]
        a = arbiter()
        out: dict[str, Any] = {
            "backend": runner.probe.backend,
            "error": runner.error,
            "reserve": s.config.gpu.reserve,
            "gpus": [],
            "ollama": None if s.readings.ollama is None else {
                "url": s.readings.ollama.url, "loaded": [m.__dict__ for m in s.readings.ollama.loaded]},
            "ollama_error": s.runners["ollama"].error if "ollama" in s.runners else None,
            "leases": a.active_leases(),
            "scheduler": {"policy": s.config.gpu.scheduler, **a.stats},
        }
        if snap is not None:
            for view, d in zip(a.gpu_view(snap), snap.to_dict()["gpus"], strict=True):
                d["leasable_bytes"] = view.leasable_bytes
                d["model_budget_bytes"] = view.model_budget_bytes
                out["gpus"].append(d)
        return out

    async def lease_acquire(size: Any, holder: str = "", gpu: Any = None, priority: int = 0,
                            preemptible: bool = False, wait: Any = 0, pid: Any = None,
                            peer: Peer | None = None) -> dict[str, Any]:
        """Lease VRAM: evict models if needed, confirm the memory free, grant (admin)."""
        nbytes = size_param("size", size)
        holder = str_param("holder", holder) if holder else f"pid {peer.pid if peer else '?'}"
        index = int_param("gpu", gpu, 0, 63, optional=True)
        holder_pid = int_param("pid", pid, 1, 2**31 - 1, optional=True)
        if holder_pid is None:
            holder_pid = peer.pid if peer else None
        elif peer is not None and not processes.descends_from(holder_pid, peer.pid, arbiter().proc_root):
            # The lease lasts while its holder's processes run: naming someone else's process as the holder
            # would keep the lease from ever being reclaimed.
            raise InvalidParams(f"'pid' must be the caller's own process ({peer.pid}) or one it started; "
                                f"{holder_pid} is neither")
        with refusals(*REFUSALS):
            return await arbiter().acquire(
                nbytes, holder, holder_pid, peer.uid if peer else None, index,
                int_param("priority", priority, -1000, 1000), bool_param("preemptible", preemptible),
                duration_param("wait", wait, MAX_LEASE_WAIT))

    async def lease_release(id: str, peer: Peer | None = None) -> dict[str, Any]:
        """Release a lease: reload the models evicted for it and record the downtime (admin; owner or root)."""
        lease_id = str_param("id", id)
        _check_owner(arbiter().leases.get(lease_id), peer, "release")
        with refusals(*REFUSALS):
            return await arbiter().release(lease_id)

    async def lease_preempt(id: str, peer: Peer | None = None) -> dict[str, Any]:
        """Ask a preemptible lease's holder to checkpoint and release (admin; owner or root)."""
        lease_id = str_param("id", id)
        _check_owner(arbiter().leases.get(lease_id), peer, "preempt")
        with refusals(*REFUSALS):
            return await arbiter().preempt(lease_id, "preempted by an operator")

    async def lease_watch(id: str, timeout: Any = 30, peer: Peer | None = None) -> dict[str, Any]:
        """Long-poll: returns when the lease is asked to yield (preempting) or is released, or at timeout.
        Called by the lease's holder, it first records the lease's processes (the command just started)."""
        seconds = duration_param("timeout", timeout)
        lease_id = str_param("id", id)
        lease = arbiter().leases.get(lease_id)
        if lease is not None and peer is not None and lease.pid == peer.pid:
            await arbiter().refresh(lease_id)
        return await arbiter().watch(lease_id, min(seconds, MAX_WATCH))

    async def lease_list(limit: int = 20) -> dict[str, Any]:
        """Active leases and the most recent ones with their evictions, restores and downtime."""
        lim = int_param("limit", limit, 1, 1000)
        return {"active": arbiter().active_leases(), "recent": [x.to_dict() for x in arbiter().store.recent(lim)]}

    async def models_list(limit: Any = MODELS_PAGE) -> list[dict[str, Any]]:
        """Models the scheduler knows, resident first then most recent: resident, size, last use, hits, pinned."""
        return arbiter().models(int_param("limit", limit, 1, cache.MAX_ENTRIES))

    async def models_load(name: str, keep_alive: Any = None) -> dict[str, Any]:
        """Make a model resident, evicting by the scheduler's policy (admin)."""
        if keep_alive is not None:
            try:
                keep_alive = keep_alive_text(keep_alive)
            except ValueError as exc:
                raise InvalidParams(f"'keep_alive' must be an Ollama duration such as '10m' or -1: {exc}") from None
        with refusals(*REFUSALS):
            return await arbiter().ensure(str_param("name", name), keep_alive)

    async def models_evict(name: str) -> dict[str, Any]:
        """Unload a model now (admin)."""
        with refusals(*REFUSALS):
            return await arbiter().evict(str_param("name", name))

    async def models_pin(name: str) -> dict[str, Any]:
        """Never evict this model for another model or a lease (admin)."""
        with refusals(*REFUSALS):
            return await arbiter().pin(str_param("name", name), True)

    async def models_unpin(name: str) -> dict[str, Any]:
        """Let the scheduler evict this model again (admin)."""
        with refusals(*REFUSALS):
            return await arbiter().pin(str_param("name", name), False)

    reg.add("gpu", gpu)
    reg.add("lease.acquire", lease_acquire, admin=True, cancel_on_hangup=True)  # a wait nobody will hear
    reg.add("lease.release", lease_release, admin=True)
    reg.add("lease.preempt", lease_preempt, admin=True)
    reg.add("lease.watch", lease_watch)
    reg.add("lease.list", lease_list)
    reg.add("models.list", models_list)
    reg.add("models.load", models_load, admin=True)
    reg.add("models.evict", models_evict, admin=True)
    reg.add("models.pin", models_pin, admin=True)
    reg.add("models.unpin", models_unpin, admin=True)
