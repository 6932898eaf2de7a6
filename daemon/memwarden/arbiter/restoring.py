"""Bringing back what a lease evicted: one model at a time, room checked before each, residency confirmed after
each, and once all are loaded every one reported restored checked again (Ollama evicts to fit the next load)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memwarden.arbiter.inputs import ArbiterInputs, listed
from memwarden.arbiter.leases import Lease, LeaseStore
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaError, keep_alive_value, normalize
from memwarden.ollama.service import ServiceControl, ServiceError
from memwarden.policies.placement import Held, available, holders_on
from memwarden.snapshots import GpuSnapshot
from memwarden.units import format_size, parse_keep_alive

log = get_logger()


class Restorer:
    """The lease ledger's restore step; `held` is the ledger's view of what the other leases may still take."""

    def __init__(self, inputs: ArbiterInputs, store: LeaseStore, held: Callable[[GpuSnapshot], list[Held]],
                 service: ServiceControl | None):
        self.inputs = inputs
        self.store = store
        self.held = held
        self.service = service

    async def restore(self, lease: Lease) -> None:
        """Reload what was evicted for `lease`, one model at a time, with its keep_alive; then check that every
        model reported restored is still resident. Models already restored for it are skipped."""
        if lease.escalated and self.service is not None:
            try:
                await self.service.start()
            except ServiceError as exc:
                log.error("could not start Ollama again", error=str(exc))
        if not lease.evicted or self.inputs.ollama is None:
            return
        for ev in lease.evicted:
            if any(r["name"] == ev["name"] for r in lease.restored):
                continue
            record = await self._restore_one(lease, ev)
            lease.restored.append(record)
            self.store.save(lease)
            log.info("model restored" if record["ok"] else "model not restored", model=ev["name"], lease=lease.id,
                     downtime_s=record.get("downtime_s"), error=record.get("error"))
        await self._confirm_restored(lease)
        downs = [r["downtime_s"] for r in lease.restored if r["ok"] and "downtime_s" in r]
        lease.downtime_s = max(downs) if downs else None

    async def _restore_one(self, lease: Lease, ev: dict[str, Any]) -> dict[str, Any]:
        inputs = self.inputs
        assert inputs.ollama is not None
        name, need = ev["name"], ev["size_vram"]
        record: dict[str, Any] = {"name": name, "ok": False}
        try:
            # An unload cut short (the grant abandoned mid-call) may have left it resident: nothing to load.
            if listed(await inputs.ollama.ps(), name):
                return {**record, "ok": True, "restored_at": inputs.clock(), "downtime_s": 0.0}
        except OllamaError as exc:
            return {**record, "error": str(exc)}
        snap = await inputs.gpu.sample()
        g = snap.gpu(lease.gpu) if snap is not None else None
        if g is not None and (room := available(g, self.held(snap), inputs.config.gpu.reserve)) < need:
            holders = holders_on(g, inputs.residents(await inputs.loaded()), self.held(snap))
            record["error"] = (f"no room: GPU {lease.gpu} has {format_size(max(0, room))} available and "
                               f"{name} needs {format_size(need)} (held by: {', '.join(holders) or 'nothing visible'}"
                               "); it loads on next use")
            return record
        try:
            keep_alive = parse_keep_alive(ev["keep_alive"])
            await inputs.ollama.load(name, keep_alive_value(keep_alive))
            resident = listed(await inputs.ollama.ps(), name)
        except (OllamaError, ValueError) as exc:
            record["error"] = str(exc)
            return record
        record["ok"] = resident
        if not resident:
            record["error"] = "loaded but not listed in /api/ps"
        record["restored_at"] = inputs.clock()
        record["downtime_s"] = round(record["restored_at"] - ev["evicted_at"], 3)
        return record

    async def _confirm_restored(self, lease: Lease) -> None:
        """Ollama may evict a model it just loaded to fit the next one: a model restored earlier and gone now
        is reported not restored."""
        if self.inputs.ollama is None or not any(r["ok"] for r in lease.restored):
            return
        try:
            resident = {normalize(m.name) for m in await self.inputs.ollama.ps()}
        except OllamaError as exc:
            resident = set()
            error = f"could not confirm it stayed resident: {exc}"
        else:
            error = "evicted again after it was restored (Ollama made room for a later model)"
        for record in lease.restored:
            if record["ok"] and normalize(record["name"]) not in resident:
                record.update(ok=False, error=error)
                record.pop("downtime_s", None)
                log.warning("model not restored", model=record["name"], lease=lease.id, error=error)
