"""The model scheduler's records: only installed models, only keep_alives Ollama accepts, a bounded table.

A real GpuArbiter on a real SQLite state file, with a fake Ollama (an in-memory model list) and a fake GPU.
"""

from __future__ import annotations

import asyncio

import pytest

from memwarden.arbiter.arbiter import GpuArbiter
from memwarden.arbiter.errors import ArbiterError
from memwarden.config.loader import parse_config
from memwarden.policies import cache
from memwarden.probes.runner import ProbeRunner
from memwarden.snapshots import Gpu, GpuSnapshot, InstalledModel, LoadedModel
from memwarden.state.db import open_state

GiB = 1024**3


class FakeOllama:
    def __init__(self, installed: dict[str, int]):
        self.installed = dict(installed)
        self.loaded: dict[str, object] = {}  # name → the keep_alive it was loaded with
        self.tags_calls = 0

    async def tags(self) -> list[InstalledModel]:
        self.tags_calls += 1
        return [InstalledModel(n, s) for n, s in self.installed.items()]

    async def ps(self) -> list[LoadedModel]:
        return [LoadedModel(n, self.installed[n], self.installed[n]) for n in self.loaded]

    async def show(self, name: str) -> dict:
        return {}

    async def load(self, name: str, keep_alive: object) -> None:
        self.loaded[name] = keep_alive

    async def unload(self, name: str) -> None:
        self.loaded.pop(name, None)


class GpuProbe:
    name = "gpu"
    backend = "sim"

    async def read(self) -> GpuSnapshot:
        return GpuSnapshot("sim", (Gpu(0, "Sim 24G", 24 * GiB, 0, processes=()),), 0.0)


@pytest.fixture
def world(tmp_path):
    def make(installed: dict[str, int], rows: list[dict] = (), scheduler: str = cache.DEFAULT_POLICY
             ) -> tuple[GpuArbiter, FakeOllama]:
        config = parse_config({"daemon": {"state_dir": str(tmp_path)},
                               "gpu": {"backend": "none", "reserve": 0, "scheduler": scheduler},
                               "ollama": {"keep_alive": "5m"}})
        db = open_state(tmp_path)
        for row in rows:
            db["models"].insert({"pinned": 0, "size": GiB, "size_measured": 0, "last_used": 1.0, "hits": 1,
                                   "keep_alive": None, **row}, pk="name", replace=True)
        ollama = FakeOllama(installed)
        arbiter = GpuArbiter(config, db, ProbeRunner(GpuProbe(), 5.0), ollama)  # type: ignore[arg-type]
        return arbiter, ollama
    return make


def rows(arbiter: GpuArbiter) -> dict[str, dict]:
    return arbiter.scheduler.table.rows()


async def test_a_model_ollama_does_not_have_is_refused_and_nothing_is_recorded(world):
    arbiter, _ = world({"big:latest": 6 * GiB})
    with pytest.raises(ArbiterError, match="not installed"):
        await arbiter.ensure("junk", "10m")
    assert dict(arbiter.cache.entries) == {} and arbiter.keep_alive == {} and rows(arbiter) == {}


async def test_a_burst_of_junk_names_costs_one_tags_call_and_no_records(world):
    arbiter, ollama = world({"big:latest": 6 * GiB})
    outcomes = await asyncio.gather(*(arbiter.ensure(f"junk-{i}") for i in range(500)), return_exceptions=True)
    assert all(isinstance(o, ArbiterError) for o in outcomes)
    assert ollama.tags_calls == 1
    assert dict(arbiter.cache.entries) == {} and rows(arbiter) == {}


async def test_a_keep_alive_ollama_refuses_is_never_stored(world):
    arbiter, ollama = world({"big:latest": 6 * GiB})
    with pytest.raises(ArbiterError, match="keep_alive 'garbage'"):
        await arbiter.ensure("big", "garbage")
    assert arbiter.keep_alive == {} and rows(arbiter) == {}

    await arbiter.ensure("big", 90)
    assert ollama.loaded == {"big:latest": 90}
    assert arbiter.keep_alive == {"big:latest": "90s"} and rows(arbiter)["big:latest"]["keep_alive"] == "90s"


async def test_note_use_records_only_a_keep_alive_ollama_accepts(world):
    arbiter, _ = world({"big:latest": 6 * GiB})
    arbiter.observe([LoadedModel("big:latest", 6 * GiB, 6 * GiB)], None)
    arbiter.note_use("big:latest", "garbage")
    assert "big:latest" not in arbiter.keep_alive
    arbiter.note_use("big:latest", "10m")
    assert arbiter.keep_alive["big:latest"] == "600s"
    arbiter.note_use("junk:latest", "10m")  # never tracked: not counted, not recorded
    assert "junk:latest" not in arbiter.cache.entries and "junk:latest" not in arbiter.keep_alive


async def test_a_stored_keep_alive_that_does_not_parse_is_dropped_and_the_default_used(world):
    arbiter, ollama = world({"big:latest": 6 * GiB, "small:latest": GiB},
                            rows=[{"name": "big:latest", "keep_alive": "garbage"},
                                  {"name": "small:latest", "keep_alive": "10m"}])
    assert arbiter.keep_alive == {"small:latest": "600s"}
    loaded = await arbiter.ensure("big")
    assert loaded["loaded"] is True and ollama.loaded["big:latest"] == 300, "ollama.keep_alive, 5m"


async def test_the_table_keeps_at_most_max_entries_in_memory_and_in_sqlite(world, monkeypatch):
    monkeypatch.setattr(cache, "MAX_ENTRIES", 5)
    arbiter, ollama = world({f"m{i}:latest": GiB for i in range(10)}, scheduler="lru")  # residents: the latest
    for i in range(10):
        arbiter.clock = lambda i=i: 1000.0 + i
        await arbiter.ensure(f"m{i}")
    resident = {n for n, e in arbiter.cache.entries.items() if e.resident}
    assert resident == set(ollama.loaded) and len(resident) == 3, "Ollama's default cap: 3 per GPU"
    assert set(arbiter.cache.entries) == resident | {"m5:latest", "m6:latest"}, "then the most recent"
    assert set(rows(arbiter)) == set(arbiter.cache.entries)


async def test_models_ollama_no_longer_lists_are_forgotten_unless_resident_or_pinned(world):
    arbiter, ollama = world({"a:latest": GiB, "b:latest": GiB, "c:latest": GiB})
    for name in ("a", "b", "c"):
        await arbiter.ensure(name)
    await arbiter.evict("a")
    await arbiter.evict("b")
    await arbiter.pin("b", True)
    for name in ("a", "b", "c"):
        del ollama.installed[f"{name}:latest"]
    await arbiter.installed.refresh()
    arbiter.flush()
    assert set(arbiter.cache.entries) == {"b:latest", "c:latest"}, "b is pinned, c is still resident"
    assert set(rows(arbiter)) == {"b:latest", "c:latest"}


async def test_pinning_needs_an_installed_model_and_unpinning_a_stranger_records_nothing(world):
    arbiter, _ = world({"big:latest": 6 * GiB})
    with pytest.raises(ArbiterError, match="not installed"):
        await arbiter.pin("junk", True)
    assert await arbiter.pin("junk", False) == {"model": "junk:latest", "pinned": False}
    assert await arbiter.pin("big", True) == {"model": "big:latest", "pinned": True}
    assert set(arbiter.cache.entries) == {"big:latest"} and rows(arbiter)["big:latest"]["pinned"] == 1


async def test_the_models_reply_lists_resident_first_then_most_recent_up_to_its_limit(world):
    arbiter, _ = world({f"m{i}:latest": GiB for i in range(4)},
                       rows=[{"name": f"m{i}:latest", "last_used": float(i)} for i in range(4)])
    arbiter.observe([LoadedModel("m0:latest", GiB, GiB)], None)
    assert [a["name"] for a in arbiter.models()] == ["m0:latest", "m3:latest", "m2:latest", "m1:latest"]
    assert [a["name"] for a in arbiter.models(limit=2)] == ["m0:latest", "m3:latest"]


async def test_the_load_duration_of_a_proxied_answer_reaches_the_policy_through_the_arbiter(world):
    arbiter, _ = world({"a:latest": GiB, "b:latest": GiB})
    await arbiter.ensure("a", load=False)
    arbiter.note_answer("a:latest", {"done": True, "done_reason": "stop", "load_duration": 7_500_000_000})
    assert cache.load_time(arbiter.cache.entries["a:latest"]) == 7.5


async def test_the_models_reply_says_each_models_load_time_and_whether_it_was_measured(world):
    arbiter, _ = world({"a:latest": 4 * 10**9, "b:latest": 2 * 10**9})
    await arbiter.ensure("a", load=False)
    await arbiter.ensure("b", load=False)
    arbiter.note_answer("a:latest", {"done": True, "load_duration": 9_250_000_000})
    loads = {m["name"]: (m["load_seconds"], m["load_measured"]) for m in arbiter.models()}
    assert loads == {"a:latest": (9.25, True), "b:latest": (2.0, False)}, "b: 1 s + 2 GB at 2 GB/s"
