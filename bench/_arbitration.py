"""Shared set-up for the GPU-arbitration benchmarks: a sim GPU, the Ollama double and a memwardend watching both.

Everything here is loopback-only and owned by the calling script: `arbitration_world` yields once the daemon is
READY and sees the resident models, and on the way out (error and SIGTERM included) stops the daemon, the double
and its runners, and removes every temp dir it made.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import managed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.daemon import DaemonProcess, short_tmpdir
from support.ollama_double import OllamaDouble, gpu_used, sim_gpu

__all__ = ["GiB", "World", "arbitration_world", "free_port", "gpu_used", "http_ready", "wait_until"]

GiB = 1024**3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def http_ready(port: int, path: str = "/api/version") -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        finally:
            conn.close()
    except OSError:
        return False


def resident_in_daemon(daemon: DaemonProcess, name: str) -> bool:
    return any(a["name"] == name and a["resident"] for a in daemon.call("models.list"))


@dataclass
class World:
    daemon: DaemonProcess
    double: OllamaDouble
    sim_file: Path
    proxy_port: int | None
    drain: Any


@contextlib.contextmanager
def arbitration_world(models: list[dict[str, Any]], resident: list[str], *, total_bytes: int,
                      double_kw: dict[str, Any] | None = None, gpu: dict[str, Any] | None = None,
                      proxy: bool = False, daemon: dict[str, Any] | None = None,
                      ollama: dict[str, Any] | None = None,
                      resident_keep_alive: str = "-1m") -> Iterator[World]:
    """A sim GPU of `total_bytes`, the double with `models` installed and `resident` loaded (keep_alive forever),
    and a memwardend with gpu.backend = "sim" and ollama.url = the double (and its proxy on a free loopback port
    when `proxy`). Yields once the daemon sees every resident model."""
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="mwbench-gpu", dir="/tmp"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        sim = sim_gpu(workdir / "gpu.json", total_bytes)
        double = OllamaDouble(sim, models, workdir=workdir / "od", **(double_kw or {}))
        stack.callback(double.cleanup)  # SIGTERM: the double kills and unbooks its runners
        double.start()
        for name in resident:
            double.load(name, keep_alive=resident_keep_alive)
        proxy_port = free_port() if proxy else None
        config: dict[str, dict[str, Any]] = {
            "daemon": {"sample_interval": "1s", "log_level": "info", **(daemon or {})},
            "gpu": {"backend": "sim", "sim_file": str(sim), "evict_timeout": "20s", **(gpu or {})},
            "ollama": {"url": double.url, "timeout": "5s", **(ollama or {})},
        }
        if proxy:
            config["proxy"] = {"enabled": True, "listen": f"127.0.0.1:{proxy_port}"}
        d = DaemonProcess(config, workdir=short_tmpdir("mwbench"))
        drain = stack.enter_context(managed(d))
        for name in resident:
            wait_until(lambda n=name: resident_in_daemon(d, n), 20, f"{name} resident in the daemon's view")
        if proxy_port is not None:
            wait_until(lambda: http_ready(proxy_port), 20, "the memwarden proxy to answer")
        yield World(d, double, sim, proxy_port, drain)
