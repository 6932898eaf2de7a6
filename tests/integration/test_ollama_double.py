"""The Ollama test double, run as a real subprocess, behaves as ollama-api.md says — awkward parts included."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from memwarden.gpu import simfile
from support.ollama_double import (
    FOREVER_NS,
    GiB,
    OllamaDouble,
    Reply,
    bookings,
    gpu_used,
    parse_go_duration,
    parse_keep_alive,
    sim_gpu,
    wait_until,
)
from support.ollama_double.goformat import DurationError

MODELS = [
    {"name": "llama3.2:1b", "size": 2 * GiB, "family": "llama", "parameter_size": "1.2B",
     "quantization_level": "Q8_0", "context_length": 4096},
    *({"name": n, "size": 4 * GiB, "family": "qwen2", "parameter_size": "7B", "quantization_level": "Q4_K_M"}
      for n in ("alpha", "beta", "gamma", "delta", "epsilon")),
    {"name": "huge:70b", "size": 40 * GiB, "family": "llama", "parameter_size": "70B",
     "quantization_level": "Q4_K_M", "context_length": 8192},
]
CANNED = "The sky is blue because molecules in the air scatter blue light more than red light."
BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="odt", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sim(workdir) -> Path:
    return sim_gpu(workdir / "gpu.json", 12 * GiB)


@pytest.fixture
def make_double(sim):
    made: list[OllamaDouble] = []

    def factory(models=MODELS, **kw) -> OllamaDouble:
        od = OllamaDouble(sim, models, **{"unload_linger": 0.3, "load_seconds": 0.02, **kw})
        made.append(od)
        return od.start()

    yield factory
    for od in made:
        od.cleanup()


@pytest.fixture
def od(make_double) -> OllamaDouble:
    return make_double()


@pytest.fixture
def other_process():
    """A process that is not Ollama (say, a trainer) and can book VRAM in the sim file."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def in_background(fn, *args, **kw) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args, **kw)), daemon=True)
    t.start()
    return t, out


def loaded(od: OllamaDouble) -> dict[str, dict]:
    return {r["name"]: r for r in od.state()["loaded"]}


# ---- Go formats, no server ----

@pytest.mark.parametrize(("text", "ns"), [("10m", 600 * 10**9), ("1h2m3s", 3723 * 10**9), ("-1m", -60 * 10**9),
                                         ("0", 0), ("300ms", 300 * 10**6), ("1.5h", 5400 * 10**9), (".5s", 5 * 10**8),
                                         ("1µs", 1000), ("+2s", 2 * 10**9)])
def test_go_durations_parse_as_go_does(text, ns):
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(("text", "message"), [("300", "missing unit"), ("5x", 'unknown unit "x"'),
                                               ("", "invalid duration"), ("-", "invalid duration"),
                                               ("3000000h", "invalid duration")])
def test_bad_go_durations_fail_with_go_messages(text, message):
    with pytest.raises(DurationError, match=message):
        parse_go_duration(text)


def test_keep_alive_values():
    assert parse_keep_alive(30) == 30 * 10**9
    assert parse_keep_alive(1.5) == 1_500_000_000
    assert parse_keep_alive(-1) == parse_keep_alive("-1m") == FOREVER_NS
    for bad in (True, {}, [], None):
        with pytest.raises(DurationError):
            parse_keep_alive(bad)


# ---- the running double ----

def test_plain_routes_tags_and_show(od):
    assert od.get("/").body == b"Ollama is running"
    assert od.get("/api/version").json() == {"version": "0.12.6"}
    assert od.request("HEAD", "/api/version").status == 200
    tags = {m["name"]: m for m in od.tags()}
    assert set(tags) == {"llama3.2:1b", "alpha:latest", "beta:latest", "gamma:latest", "delta:latest",
                         "epsilon:latest", "huge:70b"}
    m = tags["llama3.2:1b"]
    assert m["model"] == "llama3.2:1b" and m["size"] == 2 * GiB
    assert m["digest"] == hashlib.sha256(b"llama3.2:1b").hexdigest()
    assert m["details"] == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "1.2B", "quantization_level": "Q8_0"}
    when(m["modified_at"])
    show = od.post("/api/show", {"model": "alpha"}).json()  # "alpha" means "alpha:latest"
    for key in ("license", "modelfile", "parameters", "template", "system", "details", "model_info",
                "capabilities", "modified_at"):
        assert key in show, key
    assert show["model_info"]["general.architecture"] == "qwen2"
    assert show["capabilities"] == ["completion"]
    blob = re.search(r"^FROM (\S+)$", show["modelfile"], re.M).group(1)
    assert Path(blob).name == f"sha256-{hashlib.sha256(b'alpha:latest').hexdigest()}"
    assert Path(blob).stat().st_size == 4 * GiB  # sparse
    assert od.get("/api/nope").status == 404 and od.get("/api/nope").body == b"404 page not found"


def test_empty_prompt_loads_the_model_into_ps_and_the_sim_file(od, sim):
    t0 = datetime.now(UTC)
    reply = od.load("llama3.2:1b")
    assert reply["done"] is True and reply["done_reason"] == "load" and reply["response"] == ""
    assert reply["model"] == "llama3.2:1b"
    (ps,) = od.ps()
    assert ps["name"] == ps["model"] == "llama3.2:1b"
    assert ps["size"] == ps["size_vram"] == 2 * GiB
    assert ps["context_length"] == 4096 and ps["details"]["family"] == "llama"
    expires = when(ps["expires_at"])
    assert expires.tzinfo is not None
    assert timedelta(minutes=4) < expires - t0 < timedelta(minutes=6)  # the server default, 5m
    (runner,) = od.state()["loaded"]
    assert runner["state"] == "loaded" and runner["in_flight"] == 0
    assert od.runner_pids() == [runner["pid"]]
    assert bookings(sim) == {runner["pid"]: 2 * GiB}
    assert simfile.pid_alive(runner["pid"])


def test_unload_answers_at_once_but_the_vram_stays_held_until_the_runner_exits(make_double, sim):
    linger = 3.0
    od = make_double(unload_linger=linger)
    od.load("alpha")
    pid = od.runner_pids()[0]
    t0 = time.monotonic()
    reply = od.unload("alpha")
    # The answer comes at once — before the runner has let go: a 200 does NOT mean the VRAM is free.
    assert bookings(sim) == {pid: 4 * GiB}
    assert gpu_used(sim) == 4 * GiB
    assert reply == {"model": "alpha", "created_at": reply["created_at"], "response": "", "done_reason": "unload",
                     "done": True}
    assert od.ps() == []  # the unload started right after the answer
    assert [r["pid"] for r in od.state()["unloading"]] == [pid]
    wait_until(lambda: gpu_used(sim) == 0, timeout=15, message="the runner's VRAM to be freed")
    freed_after = time.monotonic() - t0
    assert freed_after >= linger - 0.2, freed_after
    assert not simfile.pid_alive(pid)
    # The runner is gone; the simulator reaps it from its table on its own time.
    state = wait_until(lambda: (s := od.state())["unloading"] == [] and s, timeout=15,
                       message="the simulator to reap the runner")
    assert state["counters"]["unloads"] == 1 and state["runner_pids"] == []


def test_unload_waits_for_in_flight_requests(make_double):
    od = make_double(chunk_delay=0.4)  # a stream of several seconds: the unload's answer comes within it
    od.load("alpha")
    thread, out = in_background(od.generate, "alpha", "tell me", stream=True)
    wait_until(lambda: loaded(od)["alpha:latest"]["in_flight"] == 1, message="the request to be in flight")
    assert od.unload("alpha")["done_reason"] == "unload"
    # Answered without waiting for the request: it is still in flight, so the model is still loaded.
    assert loaded(od)["alpha:latest"]["in_flight"] == 1
    assert [m["name"] for m in od.ps()] == ["alpha:latest"]
    assert loaded(od)["alpha:latest"]["keep_alive_ns"] == 0
    thread.join(60)
    reply: Reply = out[0]
    assert reply.status == 200 and reply.lines()[-1]["done_reason"] == "stop"
    wait_until(lambda: od.ps() == [], timeout=30, message="the unload once the request finished")
    assert od.state()["counters"]["unloads"] == 1


def test_keep_alive_of_the_wrong_type_or_spelling_is_a_400(od):
    for bad in (True, False, {}, [], [1], "abc", "300", "5x", ""):
        for path, body in (("/api/generate", {"model": "alpha", "prompt": ""}),
                           ("/api/chat", {"model": "alpha", "messages": []})):
            reply = od.post(path, {**body, "keep_alive": bad})
            assert reply.status == 400, (path, bad)
            assert isinstance(reply.json()["error"], str) and reply.json()["error"]
    assert od.post("/api/generate", {"model": "alpha", "prompt": "", "keep_alive": True}).json() == {
        "error": "invalid duration"}
    assert od.ps() == []


def test_keep_alive_numbers_strings_negative_and_absent(od):
    def expires_in(name: str) -> timedelta:
        (m,) = [m for m in od.ps() if m["name"] == name]
        return when(m["expires_at"]) - datetime.now(UTC)

    od.load("alpha", 30)
    assert timedelta(seconds=25) < expires_in("alpha:latest") <= timedelta(seconds=30)
    od.load("alpha", "1h2m3s")
    assert timedelta(seconds=3700) < expires_in("alpha:latest") <= timedelta(seconds=3723)
    od.load("alpha")  # absent: the runner keeps the keep_alive it has (Ollama's useLoadedRunner)
    assert loaded(od)["alpha:latest"]["keep_alive_ns"] == 3723 * 10**9
    od.load("alpha", None)  # null is absent too
    assert loaded(od)["alpha:latest"]["keep_alive_ns"] == 3723 * 10**9
    for forever in (-1, "-1m"):
        od.load("beta", forever)
        assert when(next(m for m in od.ps() if m["name"] == "beta:latest")["expires_at"]).year > 2300
    assert [m["name"] for m in od.ps()] == ["beta:latest", "alpha:latest"]  # latest expiry first


def test_keep_alive_runs_out_and_keep_alive_zero_with_a_prompt_unloads_after_the_answer(od, sim):
    od.load("alpha", "300ms")
    wait_until(lambda: od.ps() == [], timeout=5, message="the model to expire")
    assert od.state()["counters"]["expirations"] == 1
    reply = od.generate("beta", "hello", keep_alive=0)
    assert reply.status == 200 and reply.json()["done_reason"] == "stop"
    wait_until(lambda: od.ps() == [], timeout=2, message="beta to unload after its answer")
    wait_until(lambda: gpu_used(sim) == 0, timeout=5, message="the VRAM to be freed")


def test_eviction_is_shortest_keep_alive_then_name_not_lru(make_double):
    od = make_double(max_loaded=10)
    od.load("gamma", "10m")
    od.load("beta", "5m")
    od.load("alpha", "5m")  # the GPU is full: 3 x 4 GiB
    assert od.generate("alpha", "touch").status == 200  # LRU would now evict gamma
    od.load("delta", "1h")
    od.load("epsilon", "1h")
    od.load("llama3.2:1b", "1h")
    evicted = [e["model"] for e in od.state()["events"] if e["event"] == "unload_start"]
    assert evicted == ["alpha:latest", "beta:latest", "gamma:latest"]
    assert {m["name"] for m in od.ps()} == {"delta:latest", "epsilon:latest", "llama3.2:1b"}
    assert od.state()["counters"]["evictions"] == 3
    assert all(m["size_vram"] == m["size"] for m in od.ps())


def test_busy_runners_are_not_evicted_and_max_loaded_caps_the_count(make_double):
    od = make_double(max_loaded=10, chunk_delay=0.06)
    od.load("alpha", "1m")
    od.load("beta", "5m")
    od.load("gamma", "10m")
    thread, out = in_background(od.generate, "alpha", "keep me busy", stream=True)
    wait_until(lambda: loaded(od)["alpha:latest"]["in_flight"] == 1, message="alpha to be busy")
    od.load("delta", "1h")  # alpha has the shortest keep_alive but is busy: beta goes
    thread.join(10)
    assert out[0].status == 200
    assert [e["model"] for e in od.state()["events"] if e["event"] == "unload_start"] == ["beta:latest"]

    od.configure(max_loaded=2)
    od.load("llama3.2:1b", "1h")  # fits in VRAM, but 3 are loaded: evict down to 1, shortest keep_alive first
    evicted = [e["model"] for e in od.state()["events"] if e["event"] == "unload_start"]
    assert evicted == ["beta:latest", "alpha:latest", "gamma:latest"]
    assert {m["name"] for m in od.ps()} == {"delta:latest", "llama3.2:1b"}


def test_a_load_waits_for_the_evicted_runner_to_free_its_vram(make_double, sim):
    od = make_double(max_loaded=10, unload_linger=1.0)
    for name in ("alpha", "beta", "gamma"):
        od.load(name)
    t0 = time.monotonic()
    od.load("delta")
    took = time.monotonic() - t0
    assert took >= 0.9, took  # it polled the sim file until the evicted runner let go
    delta = next(m for m in od.ps() if m["name"] == "delta:latest")
    assert delta["size_vram"] == delta["size"] == 4 * GiB
    assert od.state()["counters"]["vram_recovery_timeouts"] == 0


def test_when_vram_does_not_recover_in_time_it_evicts_more_then_loads_partially(make_double, sim):
    # Ollama gives up waiting after 5 s (issue #16336); a short timeout here keeps the test fast.
    od = make_double(max_loaded=10, unload_linger=5.0)
    od.configure(vram_recovery_timeout=0.3, vram_poll_interval=0.05)
    for name in ("alpha", "beta", "gamma"):
        od.load(name)
    od.load("delta")
    (delta,) = od.ps()
    assert delta["name"] == "delta:latest" and delta["size_vram"] == 0  # all idle runners gone, VRAM still held
    assert od.state()["counters"]["vram_recovery_timeouts"] == 3
    assert gpu_used(sim) == 12 * GiB


def test_a_model_too_big_for_the_gpu_loads_partially(od, sim):
    od.load("huge:70b")
    (m,) = od.ps()
    assert m["size"] == 40 * GiB and m["size_vram"] == 12 * GiB and m["context_length"] == 8192
    assert bookings(sim) == {od.runner_pids()[0]: 12 * GiB}
    assert od.state()["counters"]["partial_loads"] == 1


def test_vram_booked_by_another_process_forces_partial_offload(od, sim, other_process):
    simfile.book(sim, 0, other_process.pid, 10 * GiB)
    od.load("alpha")
    (m,) = od.ps()
    assert m["size"] == 4 * GiB and m["size_vram"] == 2 * GiB
    runner = od.runner_pids()[0]
    assert bookings(sim) == {other_process.pid: 10 * GiB, runner: 2 * GiB}

    simfile.book(sim, 0, other_process.pid, 12 * GiB)  # the trainer grows: nothing is free
    od.load("beta")  # evicts idle alpha, waits for it, still nothing free: all in host RAM
    (m,) = od.ps()
    assert m["name"] == "beta:latest" and m["size_vram"] == 0
    assert bookings(sim) == {other_process.pid: 12 * GiB}  # a runner with no VRAM books nothing
    assert len(od.runner_pids()) == 1

    other_process.kill()
    other_process.wait()
    assert gpu_used(sim) == 0  # a dead pid's booking counts as free


def test_streaming_ndjson_and_single_objects(od):
    reply = od.post("/api/generate", {"model": "llama3.2:1b", "prompt": "why is the sky blue?"})  # stream default
    assert reply.status == 200 and reply.content_type == "application/x-ndjson"
    chunks = reply.lines()
    assert len(chunks) >= 3
    assert all(c["done"] is False and set(c) == {"model", "created_at", "response", "done"} for c in chunks[:-1])
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration"):
        assert isinstance(final[key], int) and final[key] >= 0, key
    assert final["load_duration"] > 0  # this request loaded the model
    assert isinstance(final["context"], list) and all(isinstance(t, int) for t in final["context"])
    assert final["eval_count"] == len(chunks) - 1
    assert "".join(c["response"] for c in chunks) == CANNED

    single = od.generate("llama3.2:1b", "again", stream=False)
    assert single.content_type == "application/json"
    body = single.json()
    assert body["response"] == CANNED and body["done_reason"] == "stop" and body["load_duration"] == 0

    short = od.generate("llama3.2:1b", "again", options={"num_predict": 3}).json()
    assert short["done_reason"] == "length" and short["eval_count"] == 3

    chat = od.post("/api/chat", {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.content_type == "application/x-ndjson"
    chunks = chat.lines()
    assert all(c["message"]["role"] == "assistant" for c in chunks)
    assert "".join(c["message"]["content"] for c in chunks) == CANNED
    assert chunks[-1]["done"] is True and chunks[-1]["done_reason"] == "stop" and "eval_count" in chunks[-1]
    flat = od.post("/api/chat", {"model": "llama3.2:1b", "stream": False,
                                 "messages": [{"role": "user", "content": "hi"}]}).json()
    assert flat["message"] == {"role": "assistant", "content": CANNED}

    load = od.post("/api/chat", {"model": "alpha", "messages": []}).json()
    assert load["done_reason"] == "load" and load["message"] == {"role": "assistant", "content": ""}
    unload = od.post("/api/chat", {"model": "alpha", "messages": [], "keep_alive": 0}).json()
    assert set(unload) == {"model", "created_at", "message", "done_reason", "done"}
    assert unload["done_reason"] == "unload" and unload["message"] == {"role": "assistant", "content": ""}


def test_errors(od):
    for path, body in (("/api/generate", {"model": "x", "prompt": "hi"}), ("/api/chat", {"model": "x"}),
                       ("/api/show", {"model": "x"}), ("/api/generate", {"model": "x", "prompt": "", "keep_alive": 0})):
        reply = od.post(path, body)
        assert reply.status == 404 and reply.json() == {"error": "model 'x' not found"}, path
    assert od.post("/api/generate", b"{not json").status == 400
    assert od.post("/api/generate", b"").json() == {"error": "missing request body"}
    assert od.post("/api/generate", [1]).status == 400
    assert od.post("/api/generate", {"prompt": "hi"}).json() == {"error": "model is required"}
    assert od.post("/api/generate", {"model": "alpha", "prompt": 5}).status == 400
    assert od.ps() == []


def test_create_from_a_base_with_one_uploaded_adapter(od, sim):
    adapter = os.urandom(4096)
    digest = "sha256:" + hashlib.sha256(adapter).hexdigest()
    assert od.request("HEAD", f"/api/blobs/{digest}").status == 404
    assert od.post(f"/api/blobs/{digest}", b"not the adapter").status == 400
    assert od.request("HEAD", f"/api/blobs/{digest}").status == 404
    assert od.post(f"/api/blobs/{digest}", adapter).status == 201
    assert od.post(f"/api/blobs/{digest}", adapter).status == 200
    assert od.request("HEAD", f"/api/blobs/{digest}").status == 200

    reply = od.post("/api/create", {"model": "memory-lora", "from": "llama3.2:1b",
                                    "adapters": {"adapter.gguf": digest}})
    assert reply.status == 200 and reply.content_type == "application/x-ndjson"
    statuses = [line["status"] for line in reply.lines()]
    assert statuses[-1] == "success" and len(statuses) >= 2
    tags = {m["name"]: m for m in od.tags()}
    made = tags["memory-lora:latest"]
    assert made["size"] == 2 * GiB + 4096
    assert made["details"]["family"] == "llama" and made["details"]["parent_model"] == "llama3.2:1b"
    assert "ADAPTER " in od.post("/api/show", {"model": "memory-lora"}).json()["modelfile"]

    assert od.post("/api/create", {"model": "quiet", "from": "alpha", "adapters": {"a.gguf": digest},
                                   "stream": False}).json() == {"status": "success"}
    other = "sha256:" + hashlib.sha256(b"other").hexdigest()
    assert od.post("/api/blobs/" + other, b"other").status == 201
    two = od.post("/api/create", {"model": "two", "from": "alpha", "adapters": {"a": digest, "b": other}})
    assert two.status == 400 and "one adapter" in two.json()["error"]
    missing = "sha256:" + "0" * 64
    assert od.post("/api/create", {"model": "m", "from": "alpha", "adapters": {"a": missing}}).status == 400
    assert od.post("/api/create", {"model": "m", "from": "nope", "adapters": {"a": digest}}).status == 404

    # No adapter hot-swap: the base and the adapter model are two runners (ollama #9548).
    od.load("llama3.2:1b")
    od.load("memory-lora")
    assert {m["name"] for m in od.ps()} == {"llama3.2:1b", "memory-lora:latest"}
    assert len(od.runner_pids()) == 2
    assert sorted(bookings(sim).values()) == [2 * GiB, 2 * GiB + 4096]

    assert od.request("DELETE", "/api/delete", {"model": "quiet"}).status == 200
    assert od.request("DELETE", "/api/delete", {"model": "quiet"}).status == 404
    assert "quiet:latest" not in {m["name"] for m in od.tags()}


def test_max_queue_503_while_a_load_hangs_and_ps_still_answers(make_double):
    od = make_double(max_queue=2)
    od.configure(hang_loads=True)  # ollama #17408: loads hang silently while /api/ps answers
    waiting = [in_background(od.generate, "alpha", "hi") for _ in range(2)]
    wait_until(lambda: od.state()["pending"] == 2, message="two pending requests")
    ps = od.ps()
    assert [m["name"] for m in ps] == ["alpha:latest"]  # a loading model is listed, as in Ollama
    assert loaded(od)["alpha:latest"]["state"] == "loading"
    busy = od.generate("beta", "hi")
    assert busy.status == 503 and busy.json() == {"error": BUSY}
    od.configure(hang_loads=False)
    for thread, out in waiting:
        thread.join(10)
        assert out[0].status == 200
    assert od.state()["counters"]["busy_rejections"] == 1


def test_killing_the_server_kills_its_runners(make_double, sim):
    od = make_double()
    od.load("alpha")
    od.load("beta")
    pids = od.runner_pids()
    assert len(pids) == 2 and gpu_used(sim) == 8 * GiB
    od.kill()
    wait_until(lambda: not any(simfile.pid_alive(p) for p in pids), timeout=10, message="the runners to die")
    assert gpu_used(sim) == 0
    assert od.runner_pids() == []


def test_sigterm_kills_and_unbooks_every_runner_even_a_lingering_one(make_double, sim):
    od = make_double(unload_linger=30)
    od.load("alpha")
    od.load("beta")
    od.unload("alpha")
    pids = od.runner_pids()
    assert len(pids) == 2
    assert od.stop() == 0
    assert not any(simfile.pid_alive(p) for p in pids)
    assert bookings(sim, alive_only=False) == {}


def test_a_runner_killed_from_outside_stays_listed_until_the_next_request_reloads_it(od, sim):
    od.load("alpha")
    (pid,) = od.runner_pids()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: od.state()["counters"]["runner_crashes"] == 1, message="the double to see the crash")
    assert [m["name"] for m in od.ps()] == ["alpha:latest"]
    assert gpu_used(sim) == 0
    assert od.generate("alpha", "hi").status == 200
    (new,) = od.runner_pids()
    assert new != pid and bookings(sim) == {new: 4 * GiB}
    assert od.state()["counters"]["reloads"] == 1


def test_the_request_log_and_config_hooks(od):
    od.load("alpha", "10m")
    od.generate("beta", "hi")
    od.post("/api/generate", {"model": "beta", "prompt": "", "keep_alive": True})
    log = [(r["endpoint"], r["model"], r["keep_alive"], r["keep_alive_given"], r["status"])
           for r in od.state()["requests"]]
    assert log == [("/api/generate", "alpha", "10m", True, 200), ("/api/generate", "beta", None, False, 200),
                   ("/api/generate", "beta", True, True, 400)]
    assert od.configure(unload_linger=0.1, load_seconds=0.01)["unload_linger"] == 0.1
    with pytest.raises(ValueError, match="unknown"):
        od.configure(bogus=1)
    od.clear()
    assert od.state()["requests"] == []


def test_the_cli_prints_one_line_and_stops_on_sigterm(workdir, sim):
    models = workdir / "models.json"
    models.write_text(json.dumps(MODELS[:1]))
    proc = subprocess.Popen([sys.executable, "-m", "memwarden.sim.ollama", "--listen", "127.0.0.1:0",
                             "--sim-file", str(sim), "--gpu", "0", "--models", str(models),
                             "--models-dir", str(workdir / "m")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert re.fullmatch(r"listening on http://127\.0\.0\.1:\d+\n", line), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_on_two_gpus_each_model_goes_whole_to_the_roomiest_and_evictions_free_the_right_one(workdir):
    second = {"index": 1, "name": "Sim 12G b", "total_bytes": 12 * GiB}
    sim = sim_gpu(workdir / "two.json", 12 * GiB, extra_gpus=[second])
    models = [{"name": n, "size": 7 * GiB} for n in ("a", "b", "c")]
    with OllamaDouble(sim, models, gpu=[0, 1], unload_linger=0.2, load_seconds=0.01, workdir=workdir / "od") as od:
        od.load("a", keep_alive="1h")
        od.load("b", keep_alive="10m")
        placed = {r["name"]: r["gpu"] for r in od.state()["loaded"]}
        assert placed == {"a:latest": 0, "b:latest": 1}
        assert gpu_used(sim, 0) == gpu_used(sim, 1) == 7 * GiB
        od.load("c", keep_alive="1h")  # fits on neither: the shortest keep_alive (b, GPU 1) makes room
        placed = {r["name"]: r["gpu"] for r in od.state()["loaded"]}
        assert placed == {"a:latest": 0, "c:latest": 1}
        assert gpu_used(sim, 0) == gpu_used(sim, 1) == 7 * GiB


def test_every_connection_sends_without_nagles_delay(od):
    od.generate("alpha", "hi")
    od.get("/api/tags")
    assert [r["nodelay"] for r in od.state()["requests"]] == [True, True]


def streamed_generate(od: OllamaDouble, model: str) -> socket.socket:
    """A streamed /api/generate sent on a socket of its own, its answer left to read."""
    body = json.dumps({"model": model, "prompt": "hi"}).encode()
    sock = socket.create_connection(("127.0.0.1", od.port), timeout=20)
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return sock


def streamed_generate_after(od: OllamaDouble, busy: socket.socket) -> socket.socket:
    """A second streamed request, sent once the first has its first line (and so holds the model's slot)."""
    seen = b""
    while b'"response"' not in seen:
        data = busy.recv(65536)
        assert data, "the busy answer ended before its first line"
        seen += data
    return streamed_generate(od, "alpha")


def test_a_streamed_answers_head_leaves_with_its_first_line_as_ollamas_does(make_double):
    od = make_double(chunk_delay=0.05)  # one request at a time per model; the canned answer takes ~1 s
    od.load("alpha", "1h")
    with contextlib.closing(streamed_generate(od, "alpha")) as busy, \
            contextlib.closing(streamed_generate_after(od, busy)) as waiting:
        first = waiting.recv(65536)  # sent while the busy answer holds alpha's only slot
    head, _, rest = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), first[:200]
    assert b'"response"' in rest and rest.endswith(b"\n\r\n"), \
        f"the head came without the first line (Go's net/http writes them in one piece): {first[:300]!r}"


def test_pending_requests_are_served_in_arrival_order_so_a_burst_swaps_on_each_change_of_model(make_double):
    od = make_double(max_loaded=1, chunk_delay=0.05)
    od.load("alpha", "1h")
    busy, _ = in_background(od.generate, "alpha", "keep me busy")
    wait_until(lambda: loaded(od)["alpha:latest"]["in_flight"] == 1, message="alpha to be busy")
    swap, _ = in_background(od.generate, "beta", "hi")  # waits for alpha to go idle
    wait_until(lambda: od.state()["pending"] == 1, message="beta pending")
    behind, out = in_background(od.generate, "alpha", "hi")  # alpha is loaded, but beta is ahead of it
    for t in (busy, swap, behind):
        t.join(20)
    assert out[0].status == 200
    assert [e["model"] for e in od.state()["events"] if e["event"] == "loaded"] == \
        ["alpha:latest", "beta:latest", "alpha:latest"]
