"""Request coalescing through the real proxy: the real memwardend in front of the Ollama simulator (separate
processes, on a sim GPU with room for one model at a time: OLLAMA_MAX_LOADED_MODELS=1)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from support.ollama_double import OllamaDouble
from support.ollama_double.manager import sim_gpu, wait_until

GiB = 1024**3
MODELS = [{"name": n, "size": 7 * GiB, "family": "llama", "parameter_size": "8B"} for n in ("a", "b", "c")]
WORD_DELAY = 0.02  # the simulator's pause per answer word: ~0.35 s per request, one at a time per model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(url: str, model: str) -> int:
    body = json.dumps({"model": model, "prompt": "hello", "stream": False}).encode()
    req = urllib.request.Request(url + "/api/generate", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def burst(url: str, models: list[str], gap: float = 0.05) -> list[int]:
    """Send one request per entry from its own thread, `gap` apart in this order; their statuses."""
    statuses = [0] * len(models)

    def one(i: int) -> None:
        statuses[i] = generate(url, models[i])

    threads = []
    for i in range(len(models)):
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
        time.sleep(gap)
    for t in threads:
        t.join(150)
    return statuses


def loads(double: OllamaDouble) -> list[str]:
    return [e["model"].removesuffix(":latest") for e in double.state()["events"] if e["event"] == "loaded"]


@pytest.fixture
def proxied(make_daemon):
    doubles: list[OllamaDouble] = []

    def start(max_wait: str, gpu: int = 12 * GiB, max_loaded: int = 1):
        d = make_daemon()
        sim = sim_gpu(d.workdir / "gpu.json", gpu)
        double = OllamaDouble(sim, MODELS, unload_linger=0.05, load_seconds=0.2, chunk_delay=WORD_DELAY,
                              max_loaded=max_loaded, workdir=d.workdir / "od").start()
        doubles.append(double)
        port = free_port()
        d.start_with({k: dict(v) for k, v in d.sections.items()}, {
            "gpu": {"backend": "sim", "sim_file": str(sim), "reserve": "512MiB", "evict_timeout": "20s"},
            "ollama": {"url": double.url, "timeout": "10s", "max_loaded_models": max_loaded},
            "proxy": {"enabled": True, "listen": f"127.0.0.1:{port}", "max_wait": max_wait}})
        return d, double, f"http://127.0.0.1:{port}"

    yield start
    for double in doubles:
        double.cleanup()


def test_a_burst_for_three_models_costs_one_load_each_where_ollamas_order_costs_more(proxied):
    _, double, url = proxied(max_wait="60s")
    order = ["a", "b", "a", "a", "c", "b"]

    assert burst(double.url, order) == [200] * len(order)  # straight to the simulator: its own FIFO order
    direct = loads(double)
    assert len(direct) >= 5, f"Ollama's order swaps on each change of model: {direct}"
    double.unload(direct[-1])
    double.clear()

    assert burst(url, order) == [200] * len(order)
    assert sorted(loads(double)) == ["a", "b", "c"], loads(double)


def test_max_wait_bounds_the_time_a_request_waits_behind_a_busy_resident_model(proxied):
    _, double, url = proxied(max_wait="1s")
    assert generate(url, "a") == 200  # a resident through the proxy
    double.clear()
    stop = time.monotonic() + 4.0
    statuses: list[int] = []

    def keep_a_busy() -> None:  # one request after another: a always has one in flight and one queued
        while time.monotonic() < stop:
            statuses.append(generate(url, "a"))

    clients = [threading.Thread(target=keep_a_busy) for _ in range(2)]
    for c in clients:
        c.start()
    time.sleep(0.5)
    sent = time.time()
    assert generate(url, "b") == 200
    for c in clients:
        c.join(60)

    assert set(statuses) == {200}
    received = [r for r in double.state()["requests"] if r["endpoint"] == "/api/generate"]
    b_at = next(r["t"] for r in received if r["model"].startswith("b"))
    waited = b_at - sent
    # b leaves the proxy's queue at max_wait; then a's request in flight finishes and a is unloaded for it.
    assert 0.9 <= waited <= 1.0 + 2 * 0.35 + 0.3, f"b reached Ollama {waited:.2f} s after it was sent"
    assert any(r["t"] > b_at and r["model"].startswith("a") for r in received), "a was still busy when b went"


def test_a_models_load_time_is_learned_from_the_answer_ollama_gave_through_the_proxy(proxied):
    d, double, url = proxied(max_wait="5s")
    assert generate(url, "b") == 200  # Ollama loads b for the request itself, and says how long it took
    reported = [e for e in double.state()["events"] if e["event"] == "loaded"]
    assert [e["model"].removesuffix(":latest") for e in reported] == ["b"]
    model = {m["name"]: m for m in d.call("models.list")}["b:latest"]
    assert model["load_measured"] is True, model
    assert 0.2 <= model["load_seconds"] < 10, "the simulator's load time (0.2 s), as its answer reported it"


def test_a_model_with_room_to_spare_goes_at_once_behind_a_busy_resident_one(proxied):
    d, double, url = proxied(max_wait="60s", gpu=24 * GiB, max_loaded=2)  # room for two 7 GiB models
    assert generate(url, "b") == 200  # b's size is known from now on
    double.unload("b")
    wait_until(lambda: not {m["name"]: m for m in d.call("models.list")}["b:latest"]["resident"], timeout=20,
               message="b not resident in the daemon's view")
    assert generate(url, "a") == 200
    double.clear()
    stop = threading.Event()
    statuses: list[int] = []

    def keep_a_busy() -> None:  # a always has a request in flight and one queued, until b is answered
        while not stop.is_set():
            statuses.append(generate(url, "a"))

    clients = [threading.Thread(target=keep_a_busy) for _ in range(2)]
    for c in clients:
        c.start()
    wait_until(lambda: len(statuses) >= 2, timeout=30, message="a busy")
    sent = time.time()
    assert generate(url, "b") == 200
    stop.set()
    for c in clients:
        c.join(60)

    assert set(statuses) == {200}
    received = [r for r in double.state()["requests"] if r["endpoint"] == "/api/generate"]
    b_at = next(r["t"] for r in received if r["model"].startswith("b"))
    assert b_at - sent < 20, f"b reached Ollama {b_at - sent:.1f} s after it was sent, not at max_wait (60 s)"
    assert any(r["t"] > b_at and r["model"].startswith("a") for r in received), "b went while a was busy"
    assert not [e for e in double.state()["events"] if e["event"] == "unload_start"], "and evicted nothing"
