"""Restoring after a lease: one model at a time, each confirmed, and none reported restored that Ollama evicted
again to fit the next (the fake Ollama evicts to fit a load, as Ollama's scheduler does)."""

from __future__ import annotations

import pytest

from support.arbiter_fakes import FakeGpu, FakeOllama, GiB, make_arbiter

BIG, SMALL = "big:latest", "small:latest"
SQUATTER = 7777  # a process outside any lease that takes GPU memory while the lease is held


@pytest.fixture
def world(tmp_path, db):
    gpu = FakeGpu(12 * GiB)
    ollama = FakeOllama(gpu, {BIG: 6 * GiB, SMALL: 3 * GiB})
    ollama.put(BIG)
    ollama.put(SMALL)
    return gpu, ollama, make_arbiter(tmp_path, db, gpu, ollama, reserve=GiB // 2)


def restored_ok(released) -> list[str]:
    return [r["name"] for r in released["restored"] if r["ok"]]


async def test_each_model_gets_its_own_room_check(world):
    gpu, ollama, arbiter = world
    granted = await arbiter.acquire(9 * GiB, "trainer")
    assert sorted(e["name"] for e in granted["evicted"]) == [BIG, SMALL]
    gpu.booked[SQUATTER] = 3 * GiB + GiB // 2  # 8.5 GiB free at release: room for either model, not both
    released = await arbiter.release(granted["id"])
    assert len(restored_ok(released)) == 1
    assert restored_ok(released) == sorted(ollama.resident), "every model reported restored is resident"
    [refused] = [r for r in released["restored"] if not r["ok"]]
    assert refused["error"].startswith("no room: GPU 0 has")
    assert f"pid {SQUATTER}" in refused["error"]
    assert released["downtime_s"] is not None


async def test_everything_fits_everything_comes_back(world):
    _, ollama, arbiter = world
    granted = await arbiter.acquire(9 * GiB, "trainer")
    released = await arbiter.release(granted["id"])
    assert sorted(restored_ok(released)) == [BIG, SMALL] == sorted(ollama.resident)
    assert [c for c in ollama.calls if c[0] == "load"] == [("load", e["name"]) for e in granted["evicted"]]


async def test_a_model_evicted_again_by_a_later_load_is_reported_not_restored(world):
    gpu, ollama, arbiter = world
    granted = await arbiter.acquire(9 * GiB, "trainer")
    first, second = (e["name"] for e in granted["evicted"])
    loads = []

    async def crowd_in_before_the_second_load(name: str, keep_alive) -> None:
        loads.append(name)
        if len(loads) == 2:
            # Between the room check and the load, someone else took memory: Ollama evicts the first to fit.
            gpu.booked[SQUATTER] = 12 * GiB - ollama.sizes[first] - ollama.sizes[second] + GiB
        await original_load(name, keep_alive)

    original_load = ollama.load
    ollama.load = crowd_in_before_the_second_load
    released = await arbiter.release(granted["id"])
    assert list(ollama.resident) == [second]
    by_name = {r["name"]: r for r in released["restored"]}
    assert by_name[second]["ok"]
    assert not by_name[first]["ok"] and "evicted again" in by_name[first]["error"]
    assert restored_ok(released) == list(ollama.resident)
