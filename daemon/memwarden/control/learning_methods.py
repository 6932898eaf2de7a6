"""RPC methods of the learning supervisor: runs, and the LoRA adapters they make (`adapters.*`).

An adapter exists once memories feed it (the memory store routes each memory to one) or a version of it was
promoted; `adapters.list` joins the two with its runs."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from memwarden.control.params import int_param, str_param
from memwarden.control.protocol import ApplicationError, refusals
from memwarden.control.registry import Registry

if TYPE_CHECKING:
    from memwarden.services import Services


def register_learning(reg: Registry, s: Services) -> None:

    def sup():
        return s.learning

    def summary(name: str, profile: str | None, pending: dict[str, Any]) -> dict[str, Any]:
        versions = sup().versions.of(name)
        active = next((v for v in versions if v.active), None)
        last = sup().runs.history(1, name)
        return {"name": name, "profile": profile or (last[0]["profile"] if last else None),
                "memories": s.memories.total(adapter=name), "unconsolidated": pending.get("count", 0),
                "unconsolidated_importance": pending.get("importance", 0),
                "threshold": s.config.learning.importance_threshold,
                "active_version": active.version if active else None,
                "ollama_model": active.ollama_model if active else None, "versions": len(versions),
                "last_run": {k: last[0][k] for k in ("id", "state", "created_at", "finished_at")} if last else None}

    def known(name: str) -> tuple[str | None, dict[str, Any]]:
        profiles = s.memories.adapters()
        if name not in profiles and not sup().versions.of(name):
            raise ApplicationError(f"no adapter {name!r}: no memories feed it and it has no version "
                                   "(see `memwardenctl adapters`)")
        return profiles.get(name), s.memories.unconsolidated_importance().get(name, {})

    async def adapters_list() -> list[dict[str, Any]]:
        """Every LoRA adapter: its profile, memories (learned and not), active version, Ollama model, last run."""
        profiles = s.memories.adapters()
        pending = s.memories.unconsolidated_importance()
        names = sorted(set(profiles) | {v["adapter"] for v in sup().versions.listing()})
        return [summary(n, profiles.get(n), pending.get(n, {})) for n in names]

    async def adapters_show(name: str) -> dict[str, Any]:
        """One adapter: its summary, every version and its latest runs."""
        name = str_param("name", name)
        profile, pending = known(name)
        return {**summary(name, profile, pending), "version_list": [asdict(v) for v in sup().versions.of(name)],
                "runs": sup().runs.history(10, name)}

    async def adapters_versions(name: str) -> list[dict[str, Any]]:
        """An adapter's promoted versions, oldest first: run, when, active, the Ollama model it was exported as."""
        name = str_param("name", name)
        known(name)
        return [asdict(v) for v in sup().versions.of(name)]

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
    reg.add("adapters.list", adapters_list)
    reg.add("adapters.show", adapters_show)
    reg.add("adapters.versions", adapters_versions)
    reg.add("adapters.rollback", adapters_rollback, admin=True)
