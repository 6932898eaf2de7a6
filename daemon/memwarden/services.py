"""The composition root: `build()` is the one place that makes the daemon's parts and hands each the others.

    probes (runners) ─► sample pass ─► policies ─► effectors: arbiter (leases, models), container watch,
                                                                learning supervisor, alert dispatcher
    control/ and metrics/ read the parts through Services and never reach the Daemon.

Each SQLite table has one owner among the parts (docs/architecture.md lists them). The Daemon (daemon.py)
keeps the loop, the signals and the front doors (control socket, proxy, metrics endpoint); a reload hands
one new config to `Services.reconfigure`, which gives it to every part that reads one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

from memwarden.alerts.components import ComponentHealth
from memwarden.alerts.dispatch import AlertDispatcher
from memwarden.alerts.history import AlertHistory
from memwarden.arbiter.arbiter import GpuArbiter
from memwarden.config import Config
from memwarden.containers.restart import docker_restarter
from memwarden.containers.watch import ContainerWatch
from memwarden.learning.executor_choice import make_executor
from memwarden.learning.store import MemoryStore
from memwarden.learning.supervisor import LearningSupervisor
from memwarden.ollama.client import OllamaClient
from memwarden.ollama.service import ServiceControl
from memwarden.probes.containers import ContainerProbe
from memwarden.probes.gpu import make_gpu_probe
from memwarden.probes.host import HostProbe
from memwarden.probes.ollama import OllamaProbe
from memwarden.probes.runner import ProbeRunner
from memwarden.readings import Readings
from memwarden.state.db import DB_NAME
from memwarden.state.health import StateHealth
from memwarden.sysd.notify import Notifier
from memwarden.units import format_size


class ClientCounts(Protocol):
    """What `diagnostics` reads of the control server."""

    clients: int
    served: int


class ProxyQueueCounts(Protocol):
    """What the metrics read of the proxy's queue."""

    swaps: int
    overdue: int
    waiting: Sized


class ProxyCounts(Protocol):
    """What the metrics read of the Ollama proxy."""

    requests: int
    preemptions: int
    queue: ProxyQueueCounts


@dataclass
class Services:
    config: Config
    db: Any  # sqlite_utils.Database, WAL mode (state/db.py)
    state: StateHealth
    dispatcher: AlertDispatcher
    runners: dict[str, ProbeRunner]
    ollama: OllamaClient | None
    arbiter: GpuArbiter
    containers: ContainerWatch | None
    memories: MemoryStore
    learning: LearningSupervisor
    notifier: Notifier
    readings: Readings
    clock: Callable[[], float]  # monotonic: holds, hysteresis, anything timed
    wall: Callable[[], float]  # what is shown and kept: alert times, last sample, housekeeping's cutoff
    components: ComponentHealth = field(default_factory=ComponentHealth)
    # The front doors, set by the Daemon once they listen; None while they do not.
    server: ClientCounts | None = None
    proxy: ProxyCounts | None = None

    @property
    def gpu_backend(self) -> str:
        return self.runners["gpu"].probe.backend

    def degraded(self) -> dict[str, str]:
        """Each probe whose last read failed, with why."""
        return {name: r.error for name, r in self.runners.items() if r.degraded and r.error is not None}

    def fresh(self, probe: str) -> bool:
        """A degraded probe's last reading is stale."""
        runner = self.runners.get(probe)
        return runner is not None and runner.error is None

    def effective_interval(self) -> float:
        interval = self.config.daemon.sample_interval
        if self.notifier.watchdog_usec:
            # A pass must complete (and ping) at least twice per watchdog period.
            interval = min(interval, self.notifier.watchdog_usec / 1e6 / 2)
        return interval

    def status_line(self) -> str:
        """The one-line summary: systemd's STATUS=, `status`'s summary."""
        parts = []
        snap = self.readings.host
        if snap is not None:
            parts.append(f"RAM {snap.ram_used_percent:.0f}% used ({format_size(snap.mem_available)} free)")
            if snap.swap_total:
                parts.append(f"swap {snap.swap_used_percent:.0f}%")
            if snap.pressure is not None:
                parts.append(f"PSI {snap.pressure.some_avg10:.1f}")
        for g in self.readings.gpu.gpus if self.readings.gpu else ():
            parts.append(f"GPU{g.index} {format_size(g.free_bytes)} free")
        if leases := len(self.arbiter.leases):
            parts.append(f"{leases} lease{'s' if leases != 1 else ''}")
        active = len(self.dispatcher.active)
        parts.append(f"{active} alert{'s' if active != 1 else ''}")
        if degraded := self.degraded():
            parts.append("degraded: " + ", ".join(sorted(degraded)))
        if self.components.failures:
            parts.append("failed: " + ", ".join(sorted(self.components.failures)))
        return "; ".join(parts)

    async def start(self) -> None:
        """What needs the loop before the first pass: leases interrupted by a restart are settled."""
        await self.arbiter.resume_interrupted()

    async def reconfigure(self, new: Config) -> None:
        """A reload: every part that reads the config gets the new one (already validated whole)."""
        self.config = new
        await self.dispatcher.reconfigure(new.alerts)
        self.arbiter.config = new
        if self.containers is not None:
            self.containers.config = new
        self.learning.config = new
        self.memories.routes = new.learning.routes

    async def close(self) -> None:
        """Stop the parts, learning first (its trainer checkpoints), the state database last."""
        await self.learning.close()
        await self.dispatcher.close()
        for runner in self.runners.values():
            runner.close()
            if hasattr(runner.probe, "close"):
                runner.probe.close()
        if self.containers is not None:
            await self.containers.close()
        if self.ollama is not None:
            await self.ollama.close()
        self.db.close()
        self.state.close()  # its descriptor on the state file outlives the connection (see StateFile)


def build(config: Config, db: Any, *, env: Mapping[str, str] | None = None,
          clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
          host_probe: Any = None, gpu_probe: Any = None, container_probe: Any = None,
          restarter: Callable[[str, float], None] | None = None) -> Services:
    """The daemon's parts over an open state database. Probes and the container restarter may be given (tests,
    benches); the rest is always made here."""
    timeout = config.daemon.probe_timeout
    ollama = OllamaClient(config.ollama.url, config.ollama.timeout) if config.ollama.url else None
    runners = {"host": ProbeRunner(host_probe or HostProbe(), timeout),
               "gpu": ProbeRunner(gpu_probe or make_gpu_probe(config.gpu), timeout)}
    if ollama is not None:
        # Ollama at its default address, on a machine that may have none: no alert until one has answered there.
        runners["ollama"] = ProbeRunner(OllamaProbe(ollama), timeout, optional="ollama.url" not in config.given)
    if config.containers.enabled:
        runners["containers"] = ProbeRunner(
            container_probe or ContainerProbe(config.containers.docker_url, timeout=timeout), timeout)
    state = StateHealth(config.daemon.state_dir / DB_NAME, db, clock=wall)
    dispatcher = AlertDispatcher(AlertHistory(db), config.alerts, mono=clock)
    service = ServiceControl(config.ollama.service) if config.ollama.service else None
    arbiter = GpuArbiter(config, db, runners["gpu"], ollama, service, clock=wall)
    containers = None
    if config.containers.enabled:
        containers = ContainerWatch(config, db, restarter or docker_restarter(config.containers.docker_url),
                                    clock=wall)
    memories = MemoryStore(db, config.learning.routes)
    learning = LearningSupervisor(config, db, memories, arbiter, ollama, config.daemon.state_dir,
                                  runners["gpu"].probe.backend, clock=wall,
                                  executor=make_executor(config, config.daemon.state_dir / "runs", env))
    services = Services(config, db, state, dispatcher, runners, ollama, arbiter, containers, memories, learning,
                        Notifier(os.environ if env is None else env), Readings(started_at=wall()), clock, wall)
    learning.execution.host = lambda: services.readings.host
    dispatcher.on_record_error = services.state.record_error("alert history")
    return services
