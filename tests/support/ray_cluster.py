"""A two-node Ray cluster on this machine, loopback only: a head without the trainer's resource and workers
with it (`--resources '{"trainer_gpu": 1}'`), one CPU each. The nodes share one temp dir: the Jobs API reads a
job's log where the head's temp dir says, so nodes on one machine with temp dirs of their own lose the log of a
job that runs off the head (Ray's own multi-node tests share theirs too). close() stops this cluster's processes,
and only them, and removes the dir, whatever happened."""

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
        self.temp = self.root / "ray"
        self.workers: list[int] = []  # each worker's raylet pid
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
                    "OMP_NUM_THREADS": "1",
                    "MEMWARDEN_RAY_RUNS": str(node_runs),
                    # A dead node is noticed within seconds, not the default half minute.
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}

    @property
    def address(self) -> str:
        """The Jobs API as the host's loopback reaches it."""
        return f"http://127.0.0.1:{self.forwarded}"

    def _ray(self, *args: str) -> None:
        proc = subprocess.run([*self.netns.prefix(), str(BIN / "ray"), "start", "--node-ip-address=127.0.0.1",
                               "--num-cpus=1", "--num-gpus=0", f"--dashboard-agent-listen-port={free_port()}",
                               f"--temp-dir={self.temp}", "--disable-usage-stats", *args],
                              env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")

    def start_head(self) -> RayCluster:
        self._ray("--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true")
        self.forwarded = self.netns.forward(self.dashboard_port)
        return self

    def add_worker(self) -> int:
        """A node with the trainer's resource; its raylet's pid."""
        before = self._raylets()
        self._ray(f"--address=127.0.0.1:{self.gcs_port}", "--resources", json.dumps({RESOURCE: 1}))
        (pid,) = self._raylets() - before
        self.workers.append(pid)
        return pid

    def _raylets(self) -> set[int]:
        return {p.pid for p in self.processes() if _name(p) == "raylet"}

    def kill_raylet(self, pid: int) -> None:
        psutil.Process(pid).send_signal(signal.SIGKILL)

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


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""
