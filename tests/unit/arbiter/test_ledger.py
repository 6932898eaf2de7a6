"""The lease ledger on its own: shared inputs over a fake GPU and Ollama, no model scheduler."""

from __future__ import annotations

import asyncio
import time

import pytest

from memwarden.arbiter.errors import ArbiterError
from memwarden.arbiter.inputs import ArbiterInputs
from memwarden.arbiter.leases import LeaseStore
from memwarden.arbiter.ledger import LeaseLedger
from memwarden.policies import cache
from support.arbiter_fakes import FakeGpu, FakeOllama, GiB, fake_config, proc_stat

OLD, NEW = "old:latest", "new:latest"
HOLDER = 4242


@pytest.fixture
def world(tmp_path, db):
    gpu = FakeGpu(12 * GiB)
    ollama = FakeOllama(gpu, {OLD: 4 * GiB, NEW: 4 * GiB})
    ollama.put(OLD)
    ollama.put(NEW)
    proc_root = tmp_path / "proc"
    proc_root.mkdir()
    inputs = ArbiterInputs(fake_config(reserve=GiB, scheduler="lru"), gpu, ollama, proc_root=proc_root)  # type: ignore[arg-type]
    # OLD used longer ago than NEW: LRU evicts it first.
    inputs.cache = cache.touch(cache.touch(inputs.cache, OLD, 1.0, 4 * GiB), NEW, 2.0, 4 * GiB)
    ledger = LeaseLedger(inputs, LeaseStore(db), asyncio.Lock())
    return gpu, ollama, inputs, ledger


async def test_a_lease_that_fits_evicts_nothing_and_is_stored(world):
    gpu, ollama, inputs, ledger = world
    lease = await ledger.acquire(2 * GiB, "trainer")
    assert lease["evicted"] == [] and ollama.calls == []
    assert [x.id for x in ledger.store.active()] == [lease["id"]] and inputs.stats["grants"] == 1
    [view] = ledger.gpu_view(await gpu.sample())
    assert view.leasable_bytes == 12 * GiB - 8 * GiB - GiB - 2 * GiB, "free − reserve − what the lease may take"
    assert view.model_budget_bytes == 12 * GiB - GiB - 2 * GiB == ledger.model_budget(await gpu.sample(), 0)


async def test_a_lease_that_needs_room_evicts_in_policy_order_and_records_what_to_bring_back(world):
    _, ollama, inputs, ledger = world
    inputs.keep_alive[OLD] = "600s"
    lease = await ledger.acquire(5 * GiB, "trainer")
    assert ollama.calls == [("unload", OLD)]
    [evicted] = lease["evicted"]
    assert evicted["name"] == OLD and evicted["keep_alive"] == "600s" and evicted["size_vram"] == 4 * GiB
    assert not inputs.cache.entries[OLD].resident and inputs.cache.entries[NEW].resident
    assert inputs.stats["evictions"] == 1

    released = await ledger.release(lease["id"])
    assert [r["name"] for r in released["restored"] if r["ok"]] == [OLD] and OLD in ollama.resident
    assert ledger.leases == {} and ledger.store.active() == []


async def test_a_lease_that_cannot_fit_is_refused_and_counted_without_a_trace(world):
    _, ollama, inputs, ledger = world
    with pytest.raises(ArbiterError, match=r"20.0 GiB is more than GPU 0.s 12.0 GiB \(total\)"):
        await ledger.acquire(20 * GiB, "trainer")
    assert ledger.leases == {} and ledger.store.active() == [] and ollama.calls == []
    assert inputs.stats["refusals"] == 1 and inputs.stats["grants"] == 0


async def test_a_refusal_for_room_carries_what_holds_the_gpu(world):
    _, _, _, ledger = world
    held = await ledger.acquire(3 * GiB, "trainer")
    with pytest.raises(ArbiterError) as refused:
        await ledger.acquire(9 * GiB, "second")
    holders = refused.value.holders
    assert any(h.startswith(f"lease {held['id']} (trainer)") for h in holders)
    assert {OLD, NEW} <= {h.split()[1] for h in holders if h.startswith("model ")}
    assert all(h in str(refused.value) for h in holders), "the message names them too"


async def test_a_lease_larger_than_the_gpu_is_refused_at_once_even_with_a_wait(world):
    _, _, _, ledger = world
    with pytest.raises(ArbiterError, match="is more than GPU 0's"):
        await asyncio.wait_for(ledger.acquire(20 * GiB, "trainer", wait=600), 5)  # no wait makes a GPU larger


async def test_only_a_preemptible_lease_may_be_preempted_and_its_watcher_hears_it(world):
    _, _, _, ledger = world
    fixed = await ledger.acquire(GiB, "inference")
    with pytest.raises(ArbiterError, match="not preemptible"):
        await ledger.preempt(fixed["id"])
    training = await ledger.acquire(GiB, "training", preemptible=True)
    watcher = asyncio.create_task(ledger.watch(training["id"], 60))
    while not ledger.changed._waiters:  # the watcher is parked on the condition
        await asyncio.sleep(0)
    await ledger.preempt(training["id"], "serving needs the GPU")
    assert await watcher == {"id": training["id"], "state": "preempting"}
    assert ledger.store.active()[-1].state == "preempting"


async def test_a_preemptible_lease_waits_while_serving_is_busy(world):
    _, _, _, ledger = world
    ledger.serving_busy_until = time.monotonic() + 3600
    with pytest.raises(ArbiterError, match="serving has priority"):
        await ledger.acquire(GiB, "training", preemptible=True)
    assert (await ledger.acquire(GiB, "inference"))["state"] == "active", "a plain lease is not held back"


async def test_reap_reclaims_a_lease_once_its_holder_is_gone_and_not_before(world, tmp_path):
    _, _, _, ledger = world
    proc_stat(tmp_path / "proc", HOLDER)
    lease = await ledger.acquire(GiB, "trainer", pid=HOLDER)
    assert await ledger.reap() == [] and lease["id"] in ledger.leases
    (tmp_path / "proc" / str(HOLDER) / "stat").unlink()
    assert await ledger.reap() == [lease["id"]]
    assert ledger.leases == {} and ledger.store.recent()[0].release_reason == "holder died"


async def test_the_model_budget_counts_each_lease_at_its_full_size_on_its_own_gpu(world):
    gpu, _, _, ledger = world
    await ledger.acquire(GiB, "a")
    await ledger.acquire(2 * GiB, "b")
    snap = await gpu.sample()
    assert ledger.model_budget(snap, 0) == 12 * GiB - GiB - 3 * GiB
    assert ledger.model_budget(snap, 7) == 0, "a GPU the snapshot does not have"
