"""The RPC methods over the daemon's parts as services.build() makes them: called through the registry as the
socket would call them, after real sample passes over stub probes."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from memwarden.control.methods import register_all
from memwarden.control.protocol import APPLICATION_ERROR, PERMISSION_DENIED, RpcError
from memwarden.control.registry import RENAMED, Registry
from support.house import GiB, MiB, World, container, host, house

ROOT = SimpleNamespace(uid=0, gid=0, pid=1)
USER = SimpleNamespace(uid=1000, gid=1000, pid=1)
# `noun`, or `noun.verb`: lower case, `_` only inside a word.
NAME_RULE = re.compile(r"[a-z]+(\.[a-z]+(_[a-z]+)*)?")


@pytest.fixture
async def made(tmp_path):
    houses = []

    async def make(world: World | None = None, **sections):
        h = await house(tmp_path, world, len(houses), **sections)
        reloads: list[str] = []

        async def reload(trigger: str) -> dict:
            reloads.append(trigger)
            return {"reloaded": True, "changed": []}

        registry = Registry()
        register_all(registry, h.services, reload)
        h.registry, h.reloads = registry, reloads
        houses.append(h)
        return h

    yield make
    for h in houses:
        await h.services.close()


async def call(h, method: str, peer=ROOT, **params):
    return await h.registry.call(method, params, may_change_state=True, peer=peer)


async def test_every_method_is_a_noun_or_a_noun_and_its_verb(made):
    h = await made()
    listed = await call(h, "methods")
    names = [m["name"] for m in listed]
    assert names == sorted(set(names))
    assert [n for n in names if not NAME_RULE.fullmatch(n)] == []
    assert {"models.list", "models.load", "containers.list", "containers.history", "adapters.rollback"} <= set(names)
    assert not set(RENAMED) & set(names)  # an old name is gone, not kept beside the new one
    assert {m["name"] for m in listed if m["admin"]} >= {"models.load", "config.reload", "lease.acquire"}


async def test_status_reports_the_last_pass_and_what_is_degraded(made):
    world = World()
    h = await made(world)
    before = await call(h, "status")
    assert (before["ready"], before["last_sample"]["count"], before["last_sample"]["at"]) == (False, 0, None)
    await h.sample(passes=2)
    status = await call(h, "status")
    assert status["ready"] is True and status["last_sample"]["count"] == 2
    assert status["last_sample"]["at"] == h.clock.now
    assert status["summary"].startswith("RAM 38% used (20.0 GiB free)")
    assert status["degraded"] == {}
    world.gpu = RuntimeError("NVML: GPU is lost")
    await h.sample()
    status = await call(h, "status")
    assert status["degraded"] == {"gpu": "NVML: GPU is lost"}
    assert "degraded: gpu" in status["summary"]
    assert [a["kind"] for a in status["active_alerts"]] == ["probe.degraded"]


async def test_host_shows_each_level_and_nothing_to_judge_where_the_host_has_no_swap(made):
    world = World(host=host(mem_total=32 * GiB, mem_available=2 * GiB, swap_total=0, swap_used=0))
    h = await made(world, host={"ram_warn_percent": 85, "ram_crit_percent": 95, "hold": "0s"})
    assert (await call(h, "host"))["sampled"] is False
    await h.sample()
    shown = await call(h, "host")
    assert shown["levels"]["ram"] == {"value": 93.75, "level": "warning", "warn": 85, "crit": 95}
    assert shown["levels"]["swap"]["value"] is None and shown["levels"]["swap"]["level"] == "ok"
    assert shown["admittable_bytes"] == max(0, 2 * GiB - h.services.config.host.reserve)


async def test_used_ram_trending_to_exhaustion_raises_host_ram_trend_and_host_shows_the_forecast(made):
    world = World(host=host(mem_total=32 * GiB, mem_available=10 * GiB))
    h = await made(world, host={"trend_horizon": "6h"})
    for i in range(2 * 360):  # two hours of 10-s samples, 1.5 GiB more used an hour, a few MiB of wobble
        world.host = host(mem_total=32 * GiB, mem_available=10 * GiB - i * GiB // 240 - (i * 7919 % 5) * MiB)
        await h.sample(dt=10.0)
    shown = await call(h, "host")
    assert shown["levels"]["ram"]["level"] == "ok", "the trend must be seen before the RAM level trips"
    trend = shown["trend"]
    assert trend["verdict"] == "leak" and trend["warned"] is True and trend["scale"] >= 600
    assert 3.5 * 3600 <= trend["exhausted_in"] <= 6 * 3600  # 7 GiB left at 1.5 GiB/h: 4.7 h
    active = {a["kind"]: a for a in (await call(h, "alerts"))["active"]}
    assert "would be used up in about" in active["host.ram_trend"]["message"]


async def test_config_show_keeps_secrets_from_all_but_root(made):
    h = await made(alerts={"webhook": "https://user:hunter2@hooks.example/x"})
    shown = await call(h, "config.show", peer=USER)
    assert shown["redacted"] is True and "hunter2" not in str(shown["config"])
    with pytest.raises(RpcError) as refused:
        await call(h, "config.show", peer=USER, secrets=True)
    assert refused.value.code == PERMISSION_DENIED
    assert "hunter2" in str((await call(h, "config.show", secrets=True))["config"])


async def test_reload_is_the_daemons_own(made):
    h = await made()
    assert (await call(h, "config.reload"))["reloaded"] is True
    assert h.reloads == ["control socket"]


async def test_models_without_ollama_are_an_empty_list_and_a_refusal_in_words(made):
    h = await made()
    assert await call(h, "models.list") == []
    with pytest.raises(RpcError) as refused:
        await call(h, "models.load", name="qwen2.5:7b")
    assert refused.value.code == APPLICATION_ERROR
    assert "no Ollama configured" in refused.value.message


async def test_containers_are_listed_and_the_leaking_ones_picked_out(made):
    world = World(containers=[container("web", 300 * MiB, limit=GiB)])
    off = await made(world)
    with pytest.raises(RpcError, match="container watching is off"):
        await call(off, "containers.list")
    h = await made(world, containers={"enabled": True, "leak_window": "60s"})
    await h.sample(passes=3)
    listed = await call(h, "containers.list")
    assert listed["error"] is None
    assert [(c["name"], c["working_set"], c["limit"]) for c in listed["containers"]] == [("web", 300 * MiB, GiB)]
    assert await call(h, "containers.leaks") == []  # three flat samples: warming, no leak
    assert await call(h, "containers.history") == []
    with pytest.raises(RpcError, match="no running container 'db'"):
        await call(h, "containers.restart", name="db")


async def test_a_run_cannot_start_without_a_base_model_and_says_so(made):
    h = await made()
    with pytest.raises(RpcError) as refused:
        await call(h, "train.start", adapter="alice")
    assert (refused.value.code, refused.value.message) == (APPLICATION_ERROR, "learning.base_model is not set")
    with pytest.raises(RpcError, match="alice has no active version"):
        await call(h, "adapters.rollback", name="alice")


async def test_adapters_are_the_lora_adapters_memories_feed_with_their_versions(made):
    h = await made()
    h.services.memories.add("alice", "conversation", "What is my dog called?", "Your dog is Rex.", importance=7)
    h.services.memories.add("alice", "journal", "Walked Rex by the river.", importance=2)
    (listed,) = await call(h, "adapters.list")
    assert (listed["name"], listed["profile"], listed["memories"], listed["unconsolidated"]) == ("alice", "alice", 2, 2)
    assert (listed["unconsolidated_importance"], listed["active_version"], listed["versions"]) == (9, None, 0)
    with pytest.raises(RpcError, match="no adapter 'bob'"):
        await call(h, "adapters.show", name="bob")
    h.services.learning.versions.promote("alice", 1, "r1", "/state/adapters/alice/v1", 1000.0)
    h.services.learning.versions.promote("alice", 2, "r2", "/state/adapters/alice/v2", 2000.0)
    shown = await call(h, "adapters.show", name="alice")
    assert (shown["active_version"], shown["versions"]) == (2, 2)
    assert [(v["version"], v["active"]) for v in shown["version_list"]] == [(1, False), (2, True)]
    assert [v["run_id"] for v in await call(h, "adapters.versions", name="alice")] == ["r1", "r2"]
    rolled = await call(h, "adapters.rollback", name="alice")
    assert (rolled["active"], rolled["was"]) == (1, 2)
    assert (await call(h, "adapters.list"))[0]["active_version"] == 1


async def test_containers_count_the_restarts_in_the_history_not_dockers_restart_count(made):
    h = await made(World(containers=[container("web", 300 * MiB, limit=GiB)]), containers={"enabled": True})
    await h.sample(passes=1)
    history, now = h.services.containers.history, h.services.containers.clock()
    for at in (now - 3 * 86400, now - 600, now - 60):
        history.add("web", "c0ffee", at, "leak", 900 * MiB, dry_run=False)
    history.add("other", "beef", now - 60, "leak", MiB, dry_run=False)
    [web] = (await call(h, "containers.list"))["containers"]
    assert (web["restarts"], web["restarts_24h"], web["restart_count"]) == (3, 2, 0)
