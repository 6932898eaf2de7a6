"""RPC methods of the GPU arbiter: the GPU view, leases and the adapter scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memwarden.arbiter.arbiter import ArbiterError
from memwarden.control.params import bool_param, duration_param, int_param, size_param, str_param
from memwarden.control.protocol import ApplicationError
from memwarden.ollama.client import OllamaError

if TYPE_CHECKING:
    from memwarden.control.peer import Peer
    from memwarden.daemon import Daemon

MAX_LEASE_WAIT = 24 * 3600.0  # lease.acquire's `wait`: a longer one is refused
MAX_WATCH = 3600.0  # lease.watch's `timeout`: a longer one returns at this bound (the holder polls again)


async def _guard(coro: Any) -> Any:
    try:
        return await coro
    except (ArbiterError, OllamaError) as exc:
        raise ApplicationError(str(exc)) from None


def register_gpu(daemon: Daemon) -> None:
    reg = daemon.registry

    def arbiter():
        assert daemon.arbiter is not None
        return daemon.arbiter

    async def gpu() -> dict[str, Any]:
        """Each GPU's VRAM, temperature, processes and model budget; the Ollama view; leases."""
        snap = daemon.last_gpu
        runner = daemon.runners["gpu"]
        a = arbiter()
        out: dict[str, Any] = {
            "backend": runner.probe.backend,
            "error": runner.error,
            "reserve": daemon.config.gpu.reserve,
            "gpus": [],
            "ollama": None if daemon.last_ollama is None else {
                "url": daemon.last_ollama.url, "loaded": [m.__dict__ for m in daemon.last_ollama.loaded]},
            "ollama_error": daemon.runners["ollama"].error if "ollama" in daemon.runners else None,
            "leases": a.list(),
            "scheduler": {"policy": daemon.config.gpu.scheduler, **a.stats},
        }
        if snap is not None:
            held = a.held(snap)
            from memwarden.policies.placement import available

            for g, d in zip(snap.gpus, snap.to_dict()["gpus"], strict=True):
                d["leasable_bytes"] = max(0, available(g, held, daemon.config.gpu.reserve))
                d["model_budget_bytes"] = a.budget(snap, g.index)
                out["gpus"].append(d)
        return out

    async def lease_acquire(size: Any, holder: str = "", gpu: Any = None, priority: int = 0,
                            preemptible: bool = False, wait: Any = 0, pid: Any = None,
                            peer: Peer | None = None) -> dict[str, Any]:
        """Lease VRAM: evict models if needed, confirm the memory free, grant (admin)."""
        nbytes = size_param("size", size)
        holder = str_param("holder", holder) if holder else f"pid {peer.pid if peer else '?'}"
        index = int_param("gpu", gpu, 0, 63, optional=True)
        holder_pid = int_param("pid", pid, 1, 2**31 - 1, optional=True) or (peer.pid if peer else None)
        return await _guard(arbiter().acquire(
            nbytes, holder, holder_pid, peer.uid if peer else None, index,
            int_param("priority", priority, -1000, 1000), bool_param("preemptible", preemptible),
            duration_param("wait", wait, MAX_LEASE_WAIT)))

    async def lease_release(id: str) -> dict[str, Any]:
        """Release a lease: reload the models evicted for it and record the downtime (admin)."""
        return await _guard(arbiter().release(str_param("id", id)))

    async def lease_preempt(id: str) -> dict[str, Any]:
        """Ask a preemptible lease's holder to checkpoint and release (admin)."""
        return await _guard(arbiter().preempt(str_param("id", id), "preempted by an operator"))

    async def lease_watch(id: str, timeout: Any = 30) -> dict[str, Any]:
        """Long-poll: returns when the lease is asked to yield (preempting) or is released, or at timeout."""
        seconds = duration_param("timeout", timeout)
        return await arbiter().watch(str_param("id", id), min(seconds, MAX_WATCH))

    async def lease_list(limit: int = 20) -> dict[str, Any]:
        """Active leases and the most recent ones with their evictions, restores and downtime."""
        lim = int_param("limit", limit, 1, 1000)
        return {"active": arbiter().list(), "recent": [x.to_dict() for x in arbiter().store.recent(lim)]}

    async def adapters() -> list[dict[str, Any]]:
        """Models the scheduler knows: resident, size, last use, hits, pinned."""
        return arbiter().adapters()

    async def adapters_load(name: str, keep_alive: str | None = None) -> dict[str, Any]:
        """Make a model resident, evicting by the scheduler's policy (admin)."""
        return await _guard(arbiter().ensure(str_param("name", name), keep_alive))

    async def adapters_evict(name: str) -> dict[str, Any]:
        """Unload a model now (admin)."""
        return await _guard(arbiter().evict(str_param("name", name)))

    async def adapters_pin(name: str) -> dict[str, Any]:
        """Never evict this model for another model or a lease (admin)."""
        return arbiter().pin(str_param("name", name), True)

    async def adapters_unpin(name: str) -> dict[str, Any]:
        """Let the scheduler evict this model again (admin)."""
        return arbiter().pin(str_param("name", name), False)

    reg.add("gpu", gpu)
    reg.add("lease.acquire", lease_acquire, admin=True, cancel_on_hangup=True)  # a wait nobody will hear
    reg.add("lease.release", lease_release, admin=True)
    reg.add("lease.preempt", lease_preempt, admin=True)
    reg.add("lease.watch", lease_watch)
    reg.add("lease.list", lease_list)
    reg.add("adapters", adapters)
    reg.add("adapters.load", adapters_load, admin=True)
    reg.add("adapters.evict", adapters_evict, admin=True)
    reg.add("adapters.pin", adapters_pin, admin=True)
    reg.add("adapters.unpin", adapters_unpin, admin=True)
