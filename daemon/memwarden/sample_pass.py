"""One sample pass: sense → decide → act, over the parts that services.build() made.

Probes run in worker threads (a slow read never stalls the socket) and return frozen snapshots; pure policies
turn them into conditions and decisions; the effectors (arbiter, container watch, learning supervisor, alert
dispatcher) act. Each step is one component: its failure is local (`component`), so the other steps, READY and
the watchdog go on.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from memwarden.alerts.model import Condition
from memwarden.logs import get_logger
from memwarden.malloc import give_back
from memwarden.policies import gpu_health, host_trend
from memwarden.policies.host_memory import evaluate
from memwarden.services import Services
from memwarden.snapshots import ContainersSnapshot, GpuSnapshot, HostSnapshot, OllamaSnapshot

log = get_logger()


class SamplePass:
    def __init__(self, services: Services,
                 metrics_check: Callable[[], Any] | None = None):
        self.s = services
        # The metrics endpoint's retry of a failed listen (metrics/server.py), when metrics are on.
        self.metrics_check = metrics_check

    async def run(self) -> None:
        s, readings = self.s, self.s.readings
        started = time.perf_counter()
        names = list(s.runners)
        results = dict(zip(names, await asyncio.gather(*(s.runners[n].sample() for n in names)), strict=True))
        if results["host"] is not None:
            await self.component("host", lambda: self.act_on_host(results["host"]))
        if results["gpu"] is not None:
            await self.component("gpu", lambda: self.act_on_gpu(results["gpu"]))
        if results.get("ollama") is not None:
            readings.ollama = results["ollama"]
        await self.component("leases", lambda: self.act_on_leases(results["gpu"], results.get("ollama")))
        if results.get("containers") is not None:
            await self.component("containers", lambda: self.act_on_containers(results["containers"]))
        await self.component("learning", self.act_on_learning)
        await self.component("probes", self.act_on_degraded)
        await self.component("state", self.act_on_state)
        await self.component("metrics", self.act_on_metrics)
        await self.component("alerts", self.act_on_components)  # failing, it has only the log left to say so
        readings.samples += 1
        readings.last_at = s.wall()
        readings.last_ms = (time.perf_counter() - started) * 1000
        status = s.status_line()
        if not readings.ready:
            readings.ready = True
            s.notifier.ready(status)
            log.info("ready", status=status, first_sample_ms=round(readings.last_ms, 2))
            give_back()  # start-up's garbage is freed by now
        else:
            s.notifier.status(status)
        # Only a pass with no probe stuck feeds the watchdog: a call hung in the kernel gets us restarted.
        if not any(r.hung for r in s.runners.values()):
            s.notifier.watchdog()

    async def component(self, component: str, step: Callable[[], Any]) -> None:
        """Run one component's step of the pass (a policy and the alerts it feeds, an effector). A full, locked
        or corrupt state database is alerted by act_on_state() with its cause; anything else that escapes is a
        component.failed alert (alerts/components.py) until the step runs to its end again."""
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except sqlite3.Error as exc:
            log.error("sample pass step failed on the state database", step=component,
                      error=self.s.state.failed(exc, component))
        except Exception as exc:  # noqa: BLE001 - one component's bug must not stop the pass
            self.s.components.failed(component, exc, self.s.wall())
        else:
            self.s.components.ok(component)

    def act_on_host(self, snap: HostSnapshot) -> None:
        s = self.s
        verdict = evaluate(snap, s.readings.host_state, s.config.host, s.clock())
        s.readings.host_state = verdict.state
        s.readings.host = snap
        for change in verdict.changes:
            log.info("decision: host level changed", decision="host.level", previous=change.previous.label,
                     level=change.level.label, dry_run=s.config.daemon.dry_run, **change.inputs)
        host_trend.observe(s.readings.host_used, snap, s.clock())
        before = s.readings.host_trend
        trend = s.readings.host_trend = host_trend.forecast(s.readings.host_used, before, snap, s.config.host)
        if trend.warned != (before is not None and before.warned):
            v = trend.verdict
            log.info("decision: host RAM trend", decision="host.trend", warned=trend.warned, verdict=v.verdict,
                     scale_s=v.scale, slope_bps=round(v.slope, 1), growth=round(v.growth), noise=round(v.noise),
                     exhausted_in_s=None if trend.exhausted_in is None else round(trend.exhausted_in, 1),
                     mem_available=snap.mem_available, horizon_s=s.config.host.trend_horizon)
        conditions = (*verdict.conditions, *((trend.condition,) if trend.condition else ()))
        s.dispatcher.update("host", list(conditions), s.wall())

    def act_on_gpu(self, snap: GpuSnapshot) -> None:
        s = self.s
        verdict = gpu_health.evaluate(snap, s.readings.gpu_state, s.config.gpu, s.config.host, s.clock())
        s.readings.gpu_state = verdict.state
        s.readings.gpu = snap
        for what, before, after, inputs in verdict.changes:
            log.info("decision: gpu level changed", decision="gpu.level", what=what, previous=before.label,
                     level=after.label, **inputs)
        s.dispatcher.update("gpu", verdict.conditions, s.wall())

    async def act_on_leases(self, gpu: GpuSnapshot | None, ollama: OllamaSnapshot | None) -> None:
        arbiter = self.s.arbiter
        if ollama is not None and gpu is not None and not arbiter.lock.locked():
            await arbiter.locate_models(list(ollama.loaded), gpu)
            arbiter.observe(list(ollama.loaded), gpu)
        await arbiter.reap()
        arbiter.flush()

    async def act_on_containers(self, snap: ContainersSnapshot) -> None:
        s = self.s
        if s.containers is None:
            return
        host_available = s.readings.host.mem_available if s.readings.host else None
        conditions = await s.containers.act(snap, host_available)
        s.dispatcher.update("container", conditions, s.wall())

    async def act_on_learning(self) -> None:
        await self.s.learning.tick()
        self.s.dispatcher.update("training", self.s.learning.conditions(), self.s.wall())

    def act_on_degraded(self) -> None:
        conditions = [Condition("probe.degraded", name, "warning", f"{name} probe degraded: {error}",
                                MappingProxyType({"probe": name, "error": error}))
                      for name, error in self.s.degraded().items()]
        self.s.dispatcher.update("probe", conditions, self.s.wall())

    def act_on_state(self) -> None:
        self.s.state.check()
        self.s.dispatcher.update("state", self.s.state.conditions(), self.s.wall())

    async def act_on_metrics(self) -> None:
        # Also with metrics off: resolves a metrics.unavailable alert left open by a run that had them on.
        conditions = await self.metrics_check() if self.metrics_check is not None else []
        self.s.dispatcher.update("metrics", conditions, self.s.wall())

    def act_on_components(self) -> None:
        self.s.dispatcher.update("component", self.s.components.conditions(), self.s.wall())

    async def housekeeping(self) -> None:
        """Hourly: prune the alert history past alerts.history_retention."""
        s = self.s
        cutoff = s.wall() - s.config.alerts.history_retention
        try:
            pruned = s.dispatcher.history.prune(cutoff)
        except sqlite3.Error as exc:
            log.error("could not prune alert history", error=s.state.failed(exc, "housekeeping"))
            return
        if pruned:
            log.info("pruned alert history", rows=pruned)
