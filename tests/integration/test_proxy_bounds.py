"""The Ollama proxy at its edges: request bodies in bounded memory, and only true records in the scheduler.

The real memwardend (proxy enabled) in front of the Ollama double, both separate processes, on a sim GPU.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
from collections.abc import Iterator

import pytest

from memwarden.control.protocol import RpcError
from support.ollama_double import OllamaDouble
from support.ollama_double.manager import sim_gpu, wait_until

GiB = 1024**3
MiB = 1024**2
BIG = "big:latest"
MODELS = [
    {"name": "big", "size": 6 * GiB, "family": "llama", "parameter_size": "8B"},
    {"name": "small", "size": 2 * GiB, "family": "llama", "parameter_size": "1.5B"},
]
CAP = "1MiB"
BLOB_BYTES = 300 * MiB
RSS_HEADROOM = 100 * MiB  # generous: the figure itself is measured in bench/proxy_body_memory.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxied(make_daemon):
    """memwardend with the proxy on a free port, in front of the Ollama double: (daemon, double, port)."""
    doubles: list[OllamaDouble] = []

    def start(max_request_body: str | None = None, sample_interval: str | None = None):
        d = make_daemon()
        sim = sim_gpu(d.workdir / "gpu.json", 12 * GiB)
        double = OllamaDouble(sim, MODELS, unload_linger=0.2, workdir=d.workdir / "od").start()
        doubles.append(double)
        port = free_port()
        sections = {k: dict(v) for k, v in d.sections.items()}
        sections["gpu"] = {"backend": "sim", "sim_file": str(sim), "reserve": "512MiB", "evict_timeout": "20s"}
        sections["ollama"] = {"url": double.url, "timeout": "5s"}
        if sample_interval:  # the sample pass reads /api/tags too
            sections["daemon"]["sample_interval"] = sample_interval
        sections["proxy"] = {"enabled": True, "listen": f"127.0.0.1:{port}", "hold_timeout": "1s"}
        if max_request_body:
            sections["proxy"]["max_request_body"] = max_request_body
        d.write_config(sections)
        d.sections = sections
        d.start()
        return d, double, port

    yield start
    for double in doubles:
        double.cleanup()


def send(port: int, method: str, path: str, body=None, headers=None, timeout: float = 120):
    """(status, parsed JSON or raw bytes) of one request; `body` may be bytes or an iterable of chunks."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def generate(port: int, model: str, prompt: str = "hello", **extra):
    body = json.dumps({"model": model, "prompt": prompt, "stream": False, **extra}).encode()
    return send(port, "POST", "/api/generate", body, {"Content-Type": "application/json"})


def received(double: OllamaDouble, endpoint: str) -> list[dict]:
    return [r for r in double.state()["requests"] if r["endpoint"] == endpoint]


def vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def wait_resident(d, name: str) -> None:
    wait_until(lambda: any(a["name"] == name and a["resident"] for a in d.call("models.list")), timeout=20,
               message=f"{name} resident in the daemon's view")


# ---- item 11: request bodies -------------------------------------------------------------------------------


def test_a_json_body_over_the_cap_is_refused_413_in_ollamas_shape_and_never_forwarded(proxied):
    _, double, port = proxied(max_request_body=CAP)
    over = json.dumps({"model": BIG, "prompt": "x" * (2 * MiB), "stream": False}).encode()

    status, answer = send(port, "POST", "/api/generate", over, {"Content-Type": "application/json"})
    assert status == 413
    assert set(answer) == {"error"} and "proxy.max_request_body" in answer["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds as the bytes arrive
        for i in range(0, len(over), 64 * 1024):
            yield over[i:i + 64 * 1024]

    status, answer = send(port, "POST", "/api/chat", chunks(), {"Content-Type": "application/json"})
    assert status == 413 and "proxy.max_request_body" in answer["error"]

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # curl's way: ask before sending
        sock.sendall(b"POST /api/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (2 * MiB))
        assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 413"), "refused before a byte is sent"
    assert received(double, "/api/generate") == [] and received(double, "/api/chat") == []
    assert received(double, "/api/embed") == []

    under = json.dumps({"model": BIG, "prompt": "word " * (150 * 1024), "stream": False}).encode()
    assert len(under) < MiB
    status, answer = send(port, "POST", "/api/generate", under, {"Content-Type": "application/json"})
    assert status == 200 and answer["done"] is True
    assert len(received(double, "/api/generate")) == 1


def test_a_large_blob_upload_streams_through_in_bounded_memory(proxied):
    d, double, port = proxied()
    block = hashlib.sha256(b"memwarden").digest() * (MiB // 32)  # 1 MiB, made on the fly

    def body() -> Iterator[bytes]:
        for i in range(BLOB_BYTES // MiB):
            yield i.to_bytes(4, "big") + block[4:]

    h = hashlib.sha256()
    for chunk in body():
        h.update(chunk)
    digest = f"sha256:{h.hexdigest()}"
    # Warm the path with a small upload, so that what is measured next is the large body alone.
    small = b"warm-up"
    status, _ = send(port, "POST", f"/api/blobs/sha256:{hashlib.sha256(small).hexdigest()}", small)
    assert status == 201
    with open(f"/proc/{d.pid}/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = vm(d.pid, "VmRSS")

    status, _ = send(port, "POST", f"/api/blobs/{digest}", body(),
                     {"Content-Length": str(BLOB_BYTES), "Content-Type": "application/octet-stream"})
    peak = vm(d.pid, "VmHWM")

    assert status == 201, "the double checks the digest of what it received: 201 means every byte arrived intact"
    assert send(port, "HEAD", f"/api/blobs/{digest}")[0] == 200
    assert peak - before < RSS_HEADROOM, f"the daemon grew by {(peak - before) / MiB:.0f} MiB for a 300 MiB body"
    os.unlink(double.models_dir / "blobs" / f"sha256-{h.hexdigest()}")


# ---- item 12: only true records ------------------------------------------------------------------------------


def test_a_keep_alive_ollama_refuses_gets_its_400_and_is_not_stored(proxied):
    d, double, port = proxied()
    status, answer = generate(port, BIG, keep_alive="garbage")
    assert status == 400 and answer == {"error": 'time: invalid duration "garbage"'}, "Ollama's own answer"

    loaded = d.call("models.load", {"name": BIG})
    assert loaded["loaded"] is True
    keep_alives = [r["keep_alive"] for r in received(double, "/api/generate") if r["status"] == 200]
    assert keep_alives == [300], "loaded with ollama.keep_alive (5m), not the refused value"

    with pytest.raises(RpcError) as bad:
        d.call("models.load", {"name": "small", "keep_alive": "garbage"})
    assert bad.value.code == -32602 and "keep_alive" in bad.value.message


def test_a_refused_keep_alive_on_a_resident_model_does_not_break_its_restore(proxied):
    d, double, port = proxied()
    double.load(BIG, keep_alive="-1m")
    wait_resident(d, BIG)
    status, _ = generate(port, BIG, keep_alive="garbage")
    assert status == 400

    granted = d.call("lease.acquire", {"size": "8GiB", "holder": "test", "pid": os.getpid()})
    assert [e["name"] for e in granted["evicted"]] == [BIG]
    released = d.call("lease.release", {"id": granted["id"]})
    assert released["restored"][0]["ok"], released["restored"]
    assert received(double, "/api/generate")[-1]["keep_alive"] in (-1, "-1m"), "restored with its own keep_alive"


def test_junk_model_names_are_not_tracked_and_cost_few_tags_calls(proxied):
    d, double, port = proxied(sample_interval="1h")
    generate(port, "small")  # a real model, for contrast
    double.clear()
    junk = [f"junk-{i}" for i in range(300)]
    for name in junk:
        status, answer = generate(port, name)
        assert status == 404 and answer == {"error": f"model '{name}' not found"}

    assert [a["name"] for a in d.call("models.list")] == ["small:latest"]
    tags_calls = len(received(double, "/api/tags"))
    assert tags_calls <= len(junk) // 10, f"{tags_calls} /api/tags calls for {len(junk)} unknown names"
    with pytest.raises(RpcError) as refused:
        d.call("models.pin", {"name": "junk-1"})
    assert "not installed" in refused.value.message
    assert [a["name"] for a in d.call("models.list")] == ["small:latest"]
