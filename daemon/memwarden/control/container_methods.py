"""RPC methods of the container watch: memory per container, leaks, restart history, manual restart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memwarden.containers.history import MANUAL
from memwarden.control.params import int_param, str_param
from memwarden.control.protocol import ApplicationError
from memwarden.control.registry import Registry

if TYPE_CHECKING:
    from memwarden.services import Services


def register_containers(reg: Registry, s: Services) -> None:

    def watch():
        if s.containers is None:
            raise ApplicationError("container watching is off (set containers.enabled = true)")
        return s.containers

    async def containers_list() -> dict[str, Any]:
        """Each running container: working set, limit (0 = none), leak slope and verdict, action."""
        runner = s.runners.get("containers")
        return {"error": runner.error if runner else None, "containers": watch().rows()}

    async def containers_leaks() -> list[dict[str, Any]]:
        """Containers that leak (or hold memory idle), with slope, projection and the active alert."""
        return [r for r in watch().rows() if r["verdict"] in ("leak", "idle leak")]

    async def containers_history(limit: int = 50) -> list[dict[str, Any]]:
        """Restarts memwarden made or logged (dry run), newest first, with the verification."""
        return watch().history.recent(int_param("limit", limit, 1, 10000))

    async def containers_restart(name: str) -> dict[str, Any]:
        """Restart a container now and check afterwards that its memory came down (admin)."""
        name = str_param("name", name)
        w = watch()
        snap = w.last
        match = [c for c in (snap.containers if snap else ()) if name in (c.name, c.id, c.id[:12])]
        if not match:
            raise ApplicationError(f"no running container {name!r} (see `memwardenctl containers`)")
        try:
            return await w.restart(match[0], MANUAL)
        except Exception as exc:  # noqa: BLE001 - reported to the caller in words
            raise ApplicationError(f"restart of {name} failed: {exc}") from None

    reg.add("containers.list", containers_list)
    reg.add("containers.leaks", containers_leaks)
    reg.add("containers.history", containers_history)
    reg.add("containers.restart", containers_restart, admin=True)
