"""The daemon: one asyncio loop that owns all state and runs the sample passes on its monotonic clock.

Each pass runs sense → decide → act: probes (in worker threads, so a slow read never stalls the socket)
return snapshots, pure policies turn them into conditions and decisions, and the alert effector acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from memwarden import __version__
from memwarden.alerts.components import ComponentHealth
from memwarden.alerts.dispatch import AlertDispatcher
from memwarden.alerts.model import Condition
from memwarden.arbiter.arbiter import GpuArbiter
from memwarden.config import Config
from memwarden.config.redact import remember, secret_values
from memwarden.containers.restart import docker_restarter
from memwarden.containers.watch import ContainerWatch
from memwarden.control.admission import ClientLimits
from memwarden.control.registry import Registry
from memwarden.control.server import ControlServer, bind_unix
from memwarden.learning.store import MemoryStore
from memwarden.learning.supervisor import LearningSupervisor
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient
from memwarden.ollama.service import ServiceControl
from memwarden.policies import gpu_health
from memwarden.policies.host_memory import HostPolicyState, evaluate
from memwarden.probes.containers import ContainerProbe
from memwarden.probes.gpu import make_gpu_probe
from memwarden.probes.host import HostProbe
from memwarden.probes.ollama import OllamaProbe
from memwarden.probes.runner import ProbeRunner
from memwarden.reload import reload_config
from memwarden.snapshots import GpuSnapshot, HostSnapshot, OllamaSnapshot
from memwarden.state.alert_history import AlertHistory
from memwarden.state.db import DB_NAME, open_state
from memwarden.state.health import StateHealth
from memwarden.sysd.activation import listen_fds, unix_listener
from memwarden.sysd.notify import Notifier
from memwarden.units import format_size

log = get_logger()

HOUSEKEEPING_INTERVAL = 3600.0  # seconds between two prunes of the alert history

class Daemon:
    def __init__(
        self,
        config: Config,
        config_arg: Path | None = None,
        env: Mapping[str, str] | None = None,
        host_probe: HostProbe | None = None,
        gpu_probe: Any = None,
        container_probe: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.config = config
        self.config_arg = config_arg
        self.env = os.environ if env is None else env
        self.clock = clock  # monotonic: holds, hysteresis, anything timed
        self.wall = wall  # what is shown and kept: alert times, last sample, housekeeping's cutoff
        timeout = config.daemon.probe_timeout
        self.ollama = OllamaClient(config.ollama.url, config.ollama.timeout) if config.ollama.url else None
        self.runners: dict[str, ProbeRunner] = {
            "host": ProbeRunner(host_probe or HostProbe(), timeout),
            "gpu": ProbeRunner(gpu_probe or make_gpu_probe(config.gpu), timeout),
        }
        if self.ollama is not None:
            self.runners["ollama"] = ProbeRunner(OllamaProbe(self.ollama), timeout)
        if config.containers.enabled:
            self.runners["containers"] = ProbeRunner(
                container_probe or ContainerProbe(config.containers.docker_url, timeout=timeout), timeout)
        self.gpu_state = gpu_health.GpuPolicyState()
        self.components = ComponentHealth()
        self.notifier = Notifier(self.env)
        self.started_at = wall()
        self.started_mono = time.monotonic()  # uptime: a wall-clock step made it negative
        self.registry = Registry()
        self.host_state = HostPolicyState()
        self.last_host: HostSnapshot | None = None
        self.last_gpu: GpuSnapshot | None = None
        self.last_ollama: OllamaSnapshot | None = None
        self.last_sample_at: float | None = None
        self.last_sample_ms: float | None = None
        self.samples = 0
        self.ready = False
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._sampler: asyncio.Task | None = None
        self._rescheduled = asyncio.Event()
        self.state: StateHealth | None = None
        self.server: ControlServer | None = None
        self.dispatcher: AlertDispatcher | None = None
        self.db: Any = None
        self.arbiter: GpuArbiter | None = None
        self.proxy: Any = None
        self.metrics: Any = None  # memwarden.metrics.server.MetricsServer, imported only when enabled
        self.containers: ContainerWatch | None = None
        self.memories: MemoryStore | None = None
        self.learning: LearningSupervisor | None = None

    @property
    def degraded(self) -> dict[str, str]:
        return {name: r.error for name, r in self.runners.items() if r.error is not None}

    # ---- lifecycle -------------------------------------------------------------------------------------

    def effective_interval(self) -> float:
        interval = self.config.daemon.sample_interval
        if self.notifier.watchdog_usec:
            # A pass must complete (and ping) at least twice per watchdog period.
            interval = min(interval, self.notifier.watchdog_usec / 1e6 / 2)
        return interval

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        cfg = self.config
        remember(secret_values(cfg))
        self.db = open_state(cfg.daemon.state_dir)
        self.state = StateHealth(cfg.daemon.state_dir / DB_NAME, self.db, clock=self.wall)
        self.dispatcher = AlertDispatcher(AlertHistory(self.db), cfg.alerts, mono=self.clock)
        self.dispatcher.on_record_error = self._state_failed("alert history")
        service = ServiceControl(cfg.ollama.service) if cfg.ollama.service else None
        self.arbiter = GpuArbiter(cfg, self.db, self.runners["gpu"], self.ollama, service)
        await self.arbiter.resume_interrupted()
        if cfg.containers.enabled:
            self.containers = ContainerWatch(cfg, self.db, docker_restarter(cfg.containers.docker_url))
        self.memories = MemoryStore(self.db, cfg.learning.routes)
        self.learning = LearningSupervisor(cfg, self.db, self.memories, self.arbiter, self.ollama,
                                           cfg.daemon.state_dir, self.runners["gpu"].probe.backend)
        from memwarden.control.methods import register_all

        register_all(self)
        self.server = ControlServer(self.registry, cfg.daemon.admin_group, ClientLimits.of(cfg.daemon),
                                    on_state_error=self.state.failed)
        activated = unix_listener(listen_fds())
        if activated is not None:
            await self.server.start(activated, owned_path=None)
            socket_desc = f"fd {activated.fileno()} (socket activation)"
        else:
            await self.server.start(bind_unix(cfg.daemon.socket, cfg.daemon.socket_group), cfg.daemon.socket)
            socket_desc = str(cfg.daemon.socket)
        if cfg.proxy.enabled:
            from memwarden.proxy.server import OllamaProxy

            self.proxy = OllamaProxy(self.arbiter, cfg.proxy, cfg.proxy.upstream or cfg.ollama.url)
            await self.proxy.start()
        if cfg.metrics.enabled:
            from memwarden.metrics.server import MetricsServer

            # A port in use is no reason to stop guarding the machine: the pass retries it and alerts meanwhile.
            self.metrics = MetricsServer(self, cfg.metrics.listen)
            await self.metrics.start()
        interval = self.effective_interval()
        log.info("memwardend starting", version=__version__, pid=os.getpid(),
                 config=str(cfg.source or "embedded defaults"), socket=socket_desc,
                 state_dir=str(cfg.daemon.state_dir), sample_interval_s=interval, dry_run=cfg.daemon.dry_run,
                 watchdog_usec=self.notifier.watchdog_usec, gpu_backend=self.runners["gpu"].probe.backend,
                 ollama=cfg.ollama.url or None, leases=len(self.arbiter.leases))
        self._sampler = loop.create_task(self._sample_loop(), name="sample passes")
        await self._stop.wait()
        await self.shutdown()
        return 0

    def request_stop(self, why: str = "request") -> None:
        if not self._stop.is_set():
            log.info("memwardend stopping", reason=why)
            self.notifier.stopping()
            self._stop.set()

    async def shutdown(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.learning is not None:
            await self.learning.close()
        if self.server is not None:
            await self.server.close()
        if self.proxy is not None:
            await self.proxy.close()
        if self.metrics is not None:
            await self.metrics.close()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        for runner in self.runners.values():
            runner.close()
            if hasattr(runner.probe, "close"):
                runner.probe.close()
        if self.containers is not None:
            await self.containers.close()
        if self.ollama is not None:
            await self.ollama.close()
        if self.db is not None:
            self.db.close()
        if self.state is not None:
            self.state.close()  # its descriptor on the state file outlives the connection (see StateFile)
        log.info("memwardend stopped", uptime_s=round(self.uptime(), 1))

    def uptime(self) -> float:
        return time.monotonic() - self.started_mono

    async def _sample_loop(self) -> None:
        """A sample pass every effective_interval() and housekeeping every hour, timed by the event loop's
        monotonic clock. (apscheduler's interval trigger keeps wall-clock times: after the clock stepped back a
        day it ran no pass, and fed no watchdog, for a day.) A pass that overruns is followed at once by the
        next, never by a burst."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        housekeeping_due = due + HOUSEKEEPING_INTERVAL
        while True:
            try:
                await self.sample_pass()
                if loop.time() >= housekeeping_due:
                    housekeeping_due = loop.time() + HOUSEKEEPING_INTERVAL
                    await self._guarded("housekeeping", self.housekeeping)
            except Exception:
                log.exception("sample pass failed")
            due = max(due + self.effective_interval(), loop.time())
            while (wait := due - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self._rescheduled.wait(), wait)
                except TimeoutError:
                    break
                self._rescheduled.clear()  # a reload changed the interval: the next pass is one new interval away
                due = loop.time() + self.effective_interval()

    def _state_failed(self, what: str) -> Callable[[Exception], None]:
        def failed(exc: Exception) -> None:
            if isinstance(exc, sqlite3.Error) and self.state is not None:
                self.state.failed(exc, what)
        return failed

    async def _guarded(self, component: str, step: Callable[[], Any]) -> None:
        """Run one component's step of the pass (a policy and the alerts it feeds, an effector). Its failure is
        local: the step is skipped for this pass, the other steps still run and the watchdog is still fed. A
        full, locked or corrupt state database is alerted by act_on_state() with its cause; anything else that
        escapes is a component.failed alert (alerts/components.py) until the step runs to its end again."""
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except sqlite3.Error as exc:
            assert self.state is not None
            log.error("sample pass step failed on the state database", step=component,
                      error=self.state.failed(exc, component))
        except Exception as exc:  # noqa: BLE001 - one component's bug must not stop the pass
            self.components.failed(component, exc, self.wall())
        else:
            self.components.ok(component)

    # ---- sense → decide → act --------------------------------------------------------------------------

    async def sample_pass(self) -> None:
        started = time.perf_counter()
        names = list(self.runners)
        results = dict(zip(names, await asyncio.gather(*(self.runners[n].sample() for n in names)), strict=True))
        if results["host"] is not None:
            await self._guarded("host", lambda: self.act_on_host(results["host"]))
        if results["gpu"] is not None:
            await self._guarded("gpu", lambda: self.act_on_gpu(results["gpu"]))
        if results.get("ollama") is not None:
            self.last_ollama = results["ollama"]
        await self._guarded("leases", lambda: self.act_on_leases(results["gpu"], results.get("ollama")))
        if results.get("containers") is not None:
            await self._guarded("containers", lambda: self.act_on_containers(results["containers"]))
        await self._guarded("learning", self.act_on_learning)
        await self._guarded("probes", self.act_on_degraded)
        await self._guarded("state", self.act_on_state)
        await self._guarded("metrics", self.act_on_metrics)
        await self._guarded("alerts", self.act_on_components)  # failing, it has only the log left to say so
        self.samples += 1
        self.last_sample_at = self.wall()
        self.last_sample_ms = (time.perf_counter() - started) * 1000
        status = self.status_line()
        if not self.ready:
            self.ready = True
            self.notifier.ready(status)
            log.info("ready", status=status, first_sample_ms=round(self.last_sample_ms, 2))
        else:
            self.notifier.status(status)
        # Only a pass with no probe stuck feeds the watchdog: a call hung in the kernel gets us restarted.
        if not any(r.hung for r in self.runners.values()):
            self.notifier.watchdog()

    def act_on_gpu(self, snap: GpuSnapshot) -> None:
        verdict = gpu_health.evaluate(snap, self.gpu_state, self.config.gpu, self.config.host, self.clock())
        self.gpu_state = verdict.state
        self.last_gpu = snap
        for what, before, after, inputs in verdict.changes:
            log.info("decision: gpu level changed", decision="gpu.level", what=what, previous=before.label,
                     level=after.label, **inputs)
        assert self.dispatcher is not None
        self.dispatcher.update("gpu", verdict.conditions, self.wall())

    async def act_on_leases(self, gpu: GpuSnapshot | None, ollama: OllamaSnapshot | None) -> None:
        assert self.arbiter is not None
        if ollama is not None and gpu is not None and not self.arbiter.lock.locked():
            await self.arbiter.locate_models(list(ollama.loaded), gpu)
            self.arbiter.observe(list(ollama.loaded), gpu)
        await self.arbiter.reap()
        self.arbiter.flush()

    async def act_on_containers(self, snap: Any) -> None:
        assert self.containers is not None and self.dispatcher is not None
        host_available = self.last_host.mem_available if self.last_host else None
        conditions = await self.containers.act(snap, host_available)
        self.dispatcher.update("container", conditions, self.wall())

    async def act_on_learning(self) -> None:
        assert self.learning is not None and self.dispatcher is not None
        await self.learning.tick()
        self.dispatcher.update("training", self.learning.conditions(), self.wall())

    def act_on_components(self) -> None:
        assert self.dispatcher is not None
        self.dispatcher.update("component", self.components.conditions(), self.wall())

    def act_on_degraded(self) -> None:
        conditions = [Condition("probe.degraded", name, "warning", f"{name} probe degraded: {error}",
                                MappingProxyType({"probe": name, "error": error}))
                      for name, error in self.degraded.items()]
        assert self.dispatcher is not None
        self.dispatcher.update("probe", conditions, self.wall())

    async def act_on_metrics(self) -> None:
        # Also with metrics off: resolves a metrics.unavailable alert left open by a run that had them on.
        conditions = await self.metrics.check() if self.metrics is not None else []
        assert self.dispatcher is not None
        self.dispatcher.update("metrics", conditions, self.wall())

    def act_on_host(self, snap: HostSnapshot) -> None:
        now = self.clock()
        verdict = evaluate(snap, self.host_state, self.config.host, now)
        self.host_state = verdict.state
        self.last_host = snap
        for change in verdict.changes:
            log.info("decision: host level changed", decision="host.level", previous=change.previous.label,
                     level=change.level.label, dry_run=self.config.daemon.dry_run, **change.inputs)
        assert self.dispatcher is not None
        self.dispatcher.update("host", verdict.conditions, self.wall())

    def act_on_state(self) -> None:
        assert self.state is not None and self.dispatcher is not None
        self.state.check()
        self.dispatcher.update("state", self.state.conditions(), self.wall())

    async def housekeeping(self) -> None:
        assert self.dispatcher is not None and self.state is not None
        cutoff = self.wall() - self.config.alerts.history_retention
        try:
            pruned = self.dispatcher.history.prune(cutoff)
        except sqlite3.Error as exc:
            log.error("could not prune alert history", error=self.state.failed(exc, "housekeeping"))
            return
        if pruned:
            log.info("pruned alert history", rows=pruned)

    def status_line(self) -> str:
        parts = []
        snap = self.last_host
        if snap is not None:
            parts.append(f"RAM {snap.ram_used_percent:.0f}% used ({format_size(snap.mem_available)} free)")
            if snap.swap_total:
                parts.append(f"swap {snap.swap_used_percent:.0f}%")
            if snap.pressure is not None:
                parts.append(f"PSI {snap.pressure.some_avg10:.1f}")
        for g in self.last_gpu.gpus if self.last_gpu else ():
            parts.append(f"GPU{g.index} {format_size(g.free_bytes)} free")
        if self.arbiter is not None and self.arbiter.leases:
            parts.append(f"{len(self.arbiter.leases)} lease{'s' if len(self.arbiter.leases) != 1 else ''}")
        active = len(self.dispatcher.active) if self.dispatcher else 0
        parts.append(f"{active} alert{'s' if active != 1 else ''}")
        if self.degraded:
            parts.append("degraded: " + ", ".join(sorted(self.degraded)))
        if self.components.failures:
            parts.append("failed: " + ", ".join(sorted(self.components.failures)))
        return "; ".join(parts)

    async def reload(self, trigger: str) -> dict[str, Any]:
        async with self._reload_lock:
            return await reload_config(self, trigger)

    def reschedule(self) -> None:
        """The sample interval changed: the next pass is one new interval away."""
        self._rescheduled.set()
