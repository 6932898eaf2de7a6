"""memwardend on uvloop (`daemon.event_loop = "uvloop"`): the real daemon, its control socket telling a second uid
(`runuser -u nobody`) from root by the peer's credentials, and its proxy relaying the Ollama double's answers
whole and streamed. On asyncio's loop, the default, the rest of the suite runs."""

from __future__ import annotations

import http.client
import json
import socket

from support.ollama_double import OllamaDouble
from support.ollama_double.manager import sim_gpu
from support.other_user import GROUP, ctl_as_other, open_to_others

GiB = 1024**3
MODELS = [{"name": "small", "size": 2 * GiB, "family": "llama", "parameter_size": "1.5B"}]


def test_the_default_daemon_runs_on_asyncios_loop(daemon):
    assert daemon.call("diagnostics")["event_loop"] == "asyncio"


def test_on_uvloop_the_socket_knows_its_callers_and_the_proxy_relays_answers(make_daemon):
    d = make_daemon(config={"daemon": {"event_loop": "uvloop", "socket_group": GROUP}})
    double = OllamaDouble(sim_gpu(d.workdir / "gpu.json", 12 * GiB), MODELS, workdir=d.workdir / "od").start()
    try:
        port = free_port()
        d.sections["gpu"] = {"backend": "sim", "sim_file": str(d.workdir / "gpu.json")}
        d.sections["ollama"] = {"url": double.url, "timeout": "5s"}
        d.sections["proxy"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
        d.write_config(d.sections)
        open_to_others(d.workdir)
        d.start()
        assert d.call("diagnostics")["event_loop"] == "uvloop"

        status = ctl_as_other(d.socket_path, "--json", "status")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["ready"] is True
        reload = ctl_as_other(d.socket_path, "call", "config.reload")
        assert reload.returncode != 0 and "permission denied" in reload.stderr  # nobody is not root

        whole = post(port, {"model": "small", "prompt": "hello", "stream": False})
        assert whole[0] == 200 and json.loads(whole[1])["done"] is True
        streamed = post(port, {"model": "small", "prompt": "hello", "stream": True})
        lines = [json.loads(line) for line in streamed[1].splitlines()]
        assert streamed[0] == 200 and len(lines) > 1 and lines[-1]["done"] is True
        assert all(not line["done"] for line in lines[:-1])
    finally:
        double.cleanup()


def post(port: int, body: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/api/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
