"""A real Daemon, set up as Daemon.run() sets it up but with stub probes and no sockets, driven by real sample
passes: the collector then reads exactly the state a running daemon has."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from memwarden.alerts.dispatch import AlertDispatcher
from memwarden.arbiter.arbiter import GpuArbiter
from memwarden.config import parse_config
from memwarden.containers.watch import ContainerWatch
from memwarden.daemon import Daemon
from memwarden.learning.store import MemoryStore
from memwarden.learning.supervisor import LearningSupervisor
from memwarden.snapshots import (
    ContainerMemory,
    ContainersSnapshot,
    Gpu,
    GpuSnapshot,
    HostSnapshot,
    Pressure,
)
from memwarden.state.alert_history import AlertHistory
from memwarden.state.db import DB_NAME, open_state
from memwarden.state.health import StateHealth

GiB = 1024**3
MiB = 1024**2
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class StubProbe:
    """A probe whose next reading the test sets (an exception makes it degraded)."""

    def __init__(self, name: str, reading: Callable[[], Any], backend: str | None = None):
        self.name = name
        self.backend = backend
        self._reading = reading

    def read(self) -> Any:
        value = self._reading()
        if isinstance(value, Exception):
            raise value
        return value


def host(mem_total: int = 32 * GiB, mem_available: int = 20 * GiB, swap_total: int = 8 * GiB,
         swap_used: int = 2 * GiB, pressure: Pressure | None = None) -> HostSnapshot:
    return HostSnapshot(T0, mem_total, mem_available, swap_total, swap_used, pressure)


def gpu(index: int = 0, total: int = 12 * GiB, used: int = 3 * GiB, **kw: Any) -> Gpu:
    return Gpu(index=index, name=f"Sim {total // GiB}G", total_bytes=total, used_bytes=used, processes=(),
               uuid=f"SIM-{index}", **kw)


def container(name: str, working_set: int, limit: int = 0, rss: int | None = None) -> ContainerMemory:
    return ContainerMemory(id=name * 8 + "0" * 40, name=name, image="app:1", working_set=working_set,
                           usage=working_set + 10 * MiB, limit=limit, rss=rss)


@dataclass
class World:
    """What the probes return on the next pass; tests change it between passes."""

    host: HostSnapshot | Exception = field(default_factory=host)
    gpu: GpuSnapshot | Exception = field(default_factory=lambda: GpuSnapshot("sim", (gpu(),), T0))
    containers: list[ContainerMemory] | Exception = field(default_factory=list)


class Harness:
    def __init__(self, daemon: Daemon, world: World, clock: Clock):
        self.daemon, self.world, self.clock = daemon, world, clock

    async def sample(self, passes: int = 1, dt: float = 1.0) -> None:
        for _ in range(passes):
            self.clock.now += dt
            await self.daemon.sample_pass()

    def containers_snapshot(self) -> ContainersSnapshot | Exception:
        c = self.world.containers
        return c if isinstance(c, Exception) else ContainersSnapshot(self.clock.now, tuple(c), 2)


@pytest.fixture
async def make(tmp_path):
    made: list[Harness] = []

    async def factory(world: World | None = None, **sections: dict[str, Any]) -> Harness:
        world = world or World()
        clock = Clock()
        data: dict[str, dict[str, Any]] = {"ollama": {"url": ""}, "gpu": {"backend": "none"},
                                           "host": {"hold": "0s"}}
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        state = tmp_path / f"state{len(made)}"
        config = parse_config(data, env={"STATE_DIRECTORY": str(state), "RUNTIME_DIRECTORY": str(tmp_path)},
                              uid=1000)
        holder: list[Harness] = []
        d = Daemon(config, env={}, clock=clock,
                   host_probe=StubProbe("host", lambda: world.host),
                   gpu_probe=StubProbe("gpu", lambda: world.gpu, backend="sim"),
                   container_probe=StubProbe("containers", lambda: holder[0].containers_snapshot()))
        # As Daemon.run() does, minus the sockets and the scheduler.
        d.db = open_state(config.daemon.state_dir)
        d.state = StateHealth(config.daemon.state_dir / DB_NAME, d.db)
        d.dispatcher = AlertDispatcher(AlertHistory(d.db), config.alerts)
        d.arbiter = GpuArbiter(config, d.db, d.runners["gpu"], None, clock=clock)
        if config.containers.enabled:
            d.containers = ContainerWatch(config, d.db, lambda cid, timeout: None, clock=clock)
        d.memories = MemoryStore(d.db, config.learning.routes)
        d.learning = LearningSupervisor(config, d.db, d.memories, d.arbiter, None, state, "sim", clock=clock)
        h = Harness(d, world, clock)
        holder.append(h)
        made.append(h)
        return h

    yield factory
    for h in made:
        d = h.daemon
        if d.containers is not None:
            await d.containers.close()
        for runner in d.runners.values():
            runner.close()
        d.db.close()


def scrape(daemon: Daemon) -> dict[str, list]:
    """The collector's output as Prometheus parses it: sample name → samples (each with .labels, .value)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from memwarden.metrics.collector import DaemonCollector

    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    out: dict[str, list] = defaultdict(list)
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[sample.name].append(sample)
    return dict(out)


def value(samples: dict[str, list], name: str, **labels: Any) -> float:
    """The one sample of `name` whose labels include `labels`."""
    want = {k: str(v) for k, v in labels.items()}
    found = [s for s in samples.get(name, []) if want.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{want}: {samples.get(name)}"
    return found[0].value
