"""A two-node Ray cluster on this machine, loopback only: a head without the trainer's resource and workers
with it (`--resources '{"trainer_gpu": 1}'`), each node with its own temp dir and one CPU. close() stops this
cluster's processes and removes the dirs, whatever happened."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from support.netns import NetNamespace

BIN = Path(sys.executable).parent
RESOURCE = "trainer_gpu"
START_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, node_runs: Path):
        self.netns = NetNamespace()
        self.node_runs = node_runs  # where the workers keep their runs (MEMWARDEN_RAY_RUNS)
        self.root = Path(tempfile.mkdtemp(prefix="mwray-", dir="/tmp"))  # short: Ray's unix sockets live here
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: list[Path] = []
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
                    "MEMWARDEN_RAY_RUNS": str(node_runs),
                    # A dead node is noticed within seconds, not the default half minute.
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}

    @property
    def address(self) -> str:
        """The Jobs API as the host's loopback reaches it."""
        return f"http://127.0.0.1:{self.forwarded}"

    def _ray(self, *args: str, temp: Path) -> None:
        proc = subprocess.run([*self.netns.prefix(), str(BIN / "ray"), "start", "--node-ip-address=127.0.0.1",
                               "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats", *args],
                              env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")

    def start_head(self) -> RayCluster:
        temp = self.root / "head"
        self.nodes.append(temp)
        self._ray("--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true", temp=temp)
        self.forwarded = self.netns.forward(self.dashboard_port)
        return self

    def add_worker(self) -> Path:
        temp = self.root / f"w{len(self.nodes)}"
        self.nodes.append(temp)
        self._ray(f"--address=127.0.0.1:{self.gcs_port}", "--resources", json.dumps({RESOURCE: 1}), temp=temp)
        return temp

    def raylet(self, temp: Path) -> psutil.Process:
        for p in psutil.process_iter(["name", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "raylet" in (p.info["name"] or "") and str(temp) in cmd:
                return p
        raise LookupError(f"no raylet of {temp}")

    def kill_raylet(self, temp: Path) -> None:
        self.raylet(temp).send_signal(signal.SIGKILL)

    def interfaces(self) -> list[str]:
        """The namespace's network interfaces: loopback alone."""
        return [line.split(":")[1].strip() for line in self.netns.run("ip", "-o", "link").splitlines()]

    def listening_beyond_loopback(self) -> list[str]:
        """Sockets of the cluster's processes listening on anything but loopback."""
        ours = {p.pid for p in psutil.process_iter(["cmdline"])
                if str(self.root) in " ".join(p.info["cmdline"] or [])}
        ours |= {c.pid for pid in list(ours) for c in _children(pid)}
        bad = []
        for conn in psutil.net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in ours and conn.laddr.ip not in ("127.0.0.1", "::1"):
                bad.append(f"{conn.laddr.ip}:{conn.laddr.port} (pid {conn.pid})")
        return bad

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: those naming its temp dirs, and their descendants (workers rename
        themselves, trainers are their children)."""
        roots = [p for p in psutil.process_iter(["cmdline"]) if str(self.root) in " ".join(p.info["cmdline"] or [])]
        seen = {p.pid: p for p in roots}
        for p in roots:
            for c in _children(p.pid):
                seen.setdefault(c.pid, c)
        return list(seen.values())

    def close(self) -> None:
        """This cluster's nodes stopped, and only them: `ray stop` would stop every Ray of this user."""
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=30)
        self.netns.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
