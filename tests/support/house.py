"""The daemon's parts as services.build() makes them, with stub probes and no sockets, driven by real sample
passes: a test reads exactly the state a running daemon has, and changes the world between passes.

    h = await house(tmp_path, World(...), containers={"enabled": True})
    await h.sample(passes=3)
    h.services.arbiter, h.services.readings.host, …
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwarden.config import parse_config
from memwarden.sample_pass import SamplePass
from memwarden.services import Services, build
from memwarden.snapshots import (
    ContainerMemory,
    ContainersSnapshot,
    Gpu,
    GpuSnapshot,
    HostSnapshot,
    Pressure,
)
from memwarden.state.db import open_state
from support.clock import Clock

GiB = 1024**3
MiB = 1024**2
T0 = 1_700_000_000.0




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
    def __init__(self, services: Services, world: World, clock: Clock):
        self.services, self.world, self.clock = services, world, clock
        self.passes = SamplePass(services)

    async def sample(self, passes: int = 1, dt: float = 1.0) -> None:
        for _ in range(passes):
            self.clock.now += dt
            await self.passes.run()

    def containers_snapshot(self) -> ContainersSnapshot | Exception:
        c = self.world.containers
        return c if isinstance(c, Exception) else ContainersSnapshot(self.clock.now, tuple(c), 2)


async def house(tmp_path: Path, world: World | None = None, index: int = 0,
                **sections: dict[str, Any]) -> Harness:
    """The parts over a fresh state database in tmp_path/state{index}; `sections` override the config."""
    world = world or World()
    clock = Clock(T0)
    # No holds, the host's nor the alerts': a test steps through them itself (tests/unit/alerts/test_hold.py).
    data: dict[str, dict[str, Any]] = {"ollama": {"url": ""}, "gpu": {"backend": "none"}, "host": {"hold": "0s"},
                                       "alerts": {"hold": {"default": "0s", "training": "0s"}}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    state = tmp_path / f"state{index}"
    config = parse_config(data, env={"STATE_DIRECTORY": str(state), "RUNTIME_DIRECTORY": str(tmp_path)}, uid=1000)
    holder: list[Harness] = []
    services = build(config, open_state(config.daemon.state_dir), env={}, clock=clock, wall=clock,
                     host_probe=StubProbe("host", lambda: world.host),
                     gpu_probe=StubProbe("gpu", lambda: world.gpu, backend="sim"),
                     container_probe=StubProbe("containers", lambda: holder[0].containers_snapshot()),
                     restarter=lambda cid, timeout: None)
    holder.append(Harness(services, world, clock))
    return holder[0]
