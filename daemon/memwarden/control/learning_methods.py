"""RPC methods of the learning supervisor: runs and adapter versions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memwarden.control.params import int_param, str_param
from memwarden.control.protocol import refusals
from memwarden.control.registry import Registry

if TYPE_CHECKING:
    from memwarden.services import Services


def register_learning(reg: Registry, s: Services) -> None:

    def sup():
        return s.learning

    async def train_start(adapter: str) -> dict[str, Any]:
        """Start a run of an adapter now, whatever its importance sum and window (admin)."""
        with refusals(RuntimeError):
            return sup().start(str_param("adapter", adapter), "manual")

    async def train_status() -> dict[str, Any]:
        """The run in progress (state, last progress, lease), pending runs, what is due, adapter versions."""
        return sup().status()

    async def train_history(limit: int = 20, adapter: str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first: state, trigger, evaluation, promotion and why."""
        return sup().history(int_param("limit", limit, 1, 10000),
                             None if adapter is None else str_param("adapter", adapter))

    async def train_cancel(adapter: str) -> dict[str, Any]:
        """Stop the run of an adapter (the trainer checkpoints first); its memories stay unconsolidated (admin)."""
        with refusals(RuntimeError):
            return await sup().cancel(str_param("adapter", adapter))

    async def adapters_rollback(name: str) -> dict[str, Any]:
        """Make an adapter's previous version the active one again (admin)."""
        with refusals(RuntimeError):
            return await sup().rollback(str_param("name", name))

    reg.add("train.start", train_start, admin=True)
    reg.add("train.status", train_status)
    reg.add("train.history", train_history)
    reg.add("train.cancel", train_cancel, admin=True)
    reg.add("adapters.rollback", adapters_rollback, admin=True)
