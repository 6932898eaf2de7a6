"""A `lease.acquire` that waits for room belongs to a client: when the client hangs up, the wait ends, and room
that appears later is never granted to it. Absurd waits are refused."""

from __future__ import annotations

import json
import socket

import pytest

from memwarden.control.protocol import INVALID_PARAMS, RpcError
from support.ollama_double.manager import sim_gpu, wait_until

GiB = 1024**3


@pytest.fixture
def gpu_daemon(make_daemon):
    d = make_daemon()
    sim = d.workdir / "gpu.json"
    sim_gpu(sim, 12 * GiB)
    d.sections["gpu"] = {"backend": "sim", "sim_file": str(sim), "reserve": "1GiB"}
    d.write_config(d.sections)
    return d.start()


def events(d, name: str, **fields) -> list[dict]:
    return [e for e in d.log_events() if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())]


def test_a_waiter_that_hung_up_is_never_granted_the_room_that_appears(gpu_daemon):
    d = gpu_daemon
    first = d.call("lease.acquire", {"size": "10GiB", "holder": "first"})  # 11 GiB leasable: the GPU is full
    waiter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiter.connect(str(d.socket_path))
    waiter.sendall(json.dumps({"jsonrpc": "2.0", "method": "lease.acquire", "id": 1,
                               "params": {"size": "8GiB", "holder": "gone", "wait": "1h"}}).encode() + b"\n")
    wait_until(lambda: events(d, "decision: lease plan", holder="gone", outcome="refuse"), timeout=30,
               message="the waiter found no room and waits")
    waiter.close()
    wait_until(lambda: events(d, "control request cancelled: the client hung up", method="lease.acquire"),
               timeout=30, message="the hang-up ended the wait")
    assert d.call("diagnostics")["clients"] == 1

    d.call("lease.release", {"id": first["id"]})
    after = d.call("lease.acquire", {"size": "8GiB", "holder": "after"})  # the room is there for the living
    assert [x["holder"] for x in d.call("lease.list")["active"]] == ["after"]
    assert after["size"] == 8 * GiB
    assert not events(d, "lease granted", holder="gone")


def test_an_absurd_wait_is_refused_with_its_bound(gpu_daemon):
    with gpu_daemon.client() as c, pytest.raises(RpcError) as info:
        c.call("lease.acquire", {"size": "1GiB", "holder": "patient", "wait": 1e308})
    assert info.value.code == INVALID_PARAMS
    assert "'wait' may be at most 1d" in info.value.message
    assert gpu_daemon.call("lease.list")["active"] == []
