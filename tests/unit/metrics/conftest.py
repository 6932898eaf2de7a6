"""The metrics read the daemon's parts as services.build() makes them (support/house.py), driven by real sample
passes: the collector then reads exactly the state a running daemon has."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from memwarden.services import Services
from support.house import T0, GiB, Harness, MiB, World, container, gpu, host, house

__all__ = ["T0", "GiB", "MiB", "World", "container", "gpu", "host", "scrape", "value"]


@pytest.fixture
async def make(tmp_path):
    made: list[Harness] = []

    async def factory(world: World | None = None, **sections: dict[str, Any]) -> Harness:
        h = await house(tmp_path, world, len(made), **sections)
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.services.close()


def scrape(services: Services) -> dict[str, list]:
    """The collector's output as Prometheus parses it: sample name → samples (each with .labels, .value)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from memwarden.metrics.collector import DaemonCollector

    registry = CollectorRegistry()
    registry.register(DaemonCollector(services))
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
