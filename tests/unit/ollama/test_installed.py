import asyncio

import pytest

from memwarden.ollama.client import OllamaError
from memwarden.ollama.installed import InstalledModels
from memwarden.snapshots import InstalledModel


class Tags:
    """/api/tags on a fake Ollama: counts calls; `gate` holds them until the test opens it."""

    def __init__(self, *names: str):
        self.names = list(names)
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def tags(self) -> list[InstalledModel]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OllamaError("Ollama at http://x unreachable")
        return [InstalledModel(n, 1000) for n in self.names]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def installed(tags: Tags, clock: Clock) -> InstalledModels:
    return InstalledModels(tags, ttl=10.0, miss_refresh=1.0, clock=clock)


async def test_known_names_are_answered_from_the_cache_until_it_is_stale():
    tags, clock = Tags("a:latest"), Clock()
    models = installed(tags, clock)
    assert await models.size_of("a") == 1000
    clock.now += 9.9
    assert await models.size_of("a:latest") == 1000
    assert tags.calls == 1
    clock.now += 0.1
    assert await models.size_of("a") == 1000
    assert tags.calls == 2


async def test_a_burst_of_unknown_names_costs_one_call_per_miss_refresh():
    tags, clock = Tags("a:latest"), Clock()
    models = installed(tags, clock)
    assert [await models.size_of(f"junk-{i}") for i in range(1000)] == [None] * 1000
    assert tags.calls == 1
    clock.now += 1.0
    tags.names.append("new:latest")  # pulled a moment ago: found at the next refresh
    assert await models.size_of("new") == 1000
    assert tags.calls == 2


async def test_concurrent_callers_share_the_call_in_flight():
    tags, clock = Tags("a:latest"), Clock()
    tags.gate = asyncio.Event()
    models = installed(tags, clock)
    waiting = [asyncio.ensure_future(models.size_of(f"n{i}")) for i in range(50)]
    await asyncio.sleep(0)
    tags.gate.set()
    assert await asyncio.gather(*waiting) == [None] * 50
    assert tags.calls == 1


async def test_an_unreachable_ollama_is_asked_again_only_after_miss_refresh():
    tags, clock = Tags("a:latest"), Clock()
    tags.fail = True
    models = installed(tags, clock)
    for _ in range(20):
        with pytest.raises(OllamaError, match="unreachable"):
            await models.size_of("a")
    assert tags.calls == 1
    tags.fail = False
    clock.now += 1.0
    assert await models.size_of("a") == 1000
    assert models.names == frozenset({"a:latest"})
