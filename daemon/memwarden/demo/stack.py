"""The demo's processes: a sim-GPU file, the Ollama simulator, memwardend, and (when it can run) a private dockerd.

Every process is started in its own session, so a Ctrl-C on the terminal reaches the tour alone, which then
stops them in order (daemon, simulator, dockerd). The tour is also a child subreaper: whatever they leave behind
(a trainer, a runner, a container shim) is re-parented to it, and `stop()` ends with a sweep of every descendant
left, so no exit path (the end, an error, Ctrl-C, SIGTERM) leaves a process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from memwarden.control.client import Client, ConnectError
from memwarden.control.protocol import RpcError
from memwarden.gpu import simfile
from memwarden.sim.ollama import OllamaSim

from .console import StepFailed

GiB = 1024**3
PR_SET_CHILD_SUBREAPER = 36
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Model:
    name: str
    size: int


# Users' story 1: two 12 GiB GPUs, Ollama holding a 6 GiB model on each; plus the base the adapters are served on.
SERVING = (Model("llama3.1:8b", 6 * GiB), Model("qwen2.5:7b", 6 * GiB))
BASE = Model("demo:tiny", GiB // 4)
GPUS = (12 * GiB, 12 * GiB)
RESERVE = "2.5GiB"  # CUDA context and fragmentation: with 6 GiB resident, a 4 GiB job no longer fits (story 1)
LINGER_S = 1.0  # how long an unloaded runner keeps its VRAM after Ollama answered, as Ollama's do
LEAK_WINDOW_S = 12
DEMO_PRETRAIN_STEPS = 200


def _size(nbytes: int) -> str:
    return f"{nbytes // GiB}GiB" if nbytes % GiB == 0 else f"{nbytes // 2**20}MiB"


def become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


class Docker:
    """The private engine and the leaking container, started in a thread while the rest comes up."""

    CONTAINER = "leaky-server"

    def __init__(self) -> None:
        self.engine: Any = None
        self.reason: str | None = None  # why the container step is skipped (None: it runs)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from memwarden.sim import dockerd

        missing = dockerd.requirements()
        if missing:
            self.reason = "a private Docker engine needs " + "; ".join(missing)
            return
        self.engine = dockerd.DockerEngine(start_timeout=45.0)
        self._thread = threading.Thread(target=self._run, args=(dockerd,), name="demo-dockerd", daemon=True)
        self._thread.start()

    def _run(self, dockerd: Any) -> None:
        try:
            self.engine.start()
            self.engine.build_image()
            self.engine.run(self.CONTAINER, dockerd.leaker(2), labels={"memwarden.action": "restart"})
        except Exception as exc:  # noqa: BLE001 - any failure skips the step, said in one line
            self.reason = f"the private dockerd did not come up: {str(exc).splitlines()[0][:200]}"

    def wait(self) -> bool:
        if self._thread is not None:
            self._thread.join()
        return self.reason is None

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(60)
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.cleanup()


class Stack:
    def __init__(self, workdir: Path | None = None, docker: bool = True, base: Path | None = None):
        self.own_dir = workdir is None
        # A unix socket's path must stay under 108 bytes: a short dir in /tmp, not pytest's or $TMPDIR's.
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="mwdemo-", dir="/tmp"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sim_file = self.dir / "gpu.json"
        self.socket = self.dir / "control.sock"
        self.config = self.dir / "memwarden.toml"
        self.base_given = base is not None  # read only: the daemon and the trainer never write into a base
        self.base_model = base.resolve() if base is not None else self.dir / "base-model"
        self.daemon_log = self.dir / "memwardend.log"
        self.proxy_port = 0
        self.ollama: OllamaSim | None = None
        self.daemon: subprocess.Popen | None = None
        self.docker = Docker() if docker else None
        self.docker_reason: str | None = None if docker else "--no-docker given"
        self._init_demo: subprocess.Popen | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    # ---- start ------------------------------------------------------------------------------------------
    def start_background(self) -> None:
        """What takes longest starts first and in parallel: dockerd, and the demo base model (imports torch)."""
        if self.docker is not None:
            self.docker.start()
        if self.base_given:
            return
        log = (self.dir / "init-demo.log").open("wb")
        # A third of init-demo's default pre-training: the tour shows the cycle, not how well the base speaks.
        self._init_demo = subprocess.Popen(
            [str(BIN / "memwardenctl"), "model", "init-demo", str(self.base_model), "--pretrain-steps",
             str(DEMO_PRETRAIN_STEPS)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()

    def ollama_sim(self) -> OllamaSim:
        simfile.create(self.sim_file, [{"index": i, "name": f"Sim {size // GiB}G", "total_bytes": size}
                                       for i, size in enumerate(GPUS)])
        args = [a for m in (*SERVING, BASE) for a in ("--model", f"{m.name}={_size(m.size)}")]
        args += [a for m in SERVING for a in ("--load", m.name)]
        self.ollama = OllamaSim(self.sim_file, None, gpu="all", unload_linger=LINGER_S, load_seconds=0.2,
                                keep_alive="1h", workdir=self.dir / "ollama", extra_args=args, new_session=True)
        return self.ollama

    def wait_base_model(self, timeout: float = 300.0) -> None:
        if self.base_given:
            if not (self.base_model / "config.json").is_file():
                raise StepFailed(f"--base {self.base_model}: no model there (build one with `memwardenctl model "
                                 "init-demo DIR`)")
            return
        assert self._init_demo is not None
        try:
            rc = self._init_demo.wait(timeout)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"the demo base model was not built within {timeout:g} s") from None
        if rc != 0:
            tail = (self.dir / "init-demo.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise StepFailed(f"`memwardenctl model init-demo` exited {rc}: {tail[0] if tail else ''} "
                             "(the demo needs the train extra: make demo installs it)")

    def wait_docker(self) -> None:
        if self.docker is not None and not self.docker.wait():
            self.docker_reason = self.docker.reason
        elif self.docker is not None:
            self.docker_reason = None

    def write_config(self) -> None:
        assert self.ollama is not None
        self.proxy_port = free_port()
        use_docker = self.docker is not None and self.docker_reason is None
        sections: dict[str, dict[str, Any]] = {
            "daemon": {"state_dir": str(self.dir / "state"), "socket": str(self.socket), "sample_interval": "500ms",
                       "log_format": "json"},
            "gpu": {"backend": "sim", "sim_file": str(self.sim_file), "reserve": RESERVE, "evict_timeout": "20s"},
            "ollama": {"url": self.ollama.url, "timeout": "5s", "keep_alive": "1h"},
            "proxy": {"enabled": True, "listen": f"127.0.0.1:{self.proxy_port}", "hold_timeout": "2m"},
            "containers": {"enabled": use_docker},
            "learning": {
                "enabled": True, "base_model": str(self.base_model), "ollama_base": BASE.name, "method": "lora",
                "importance_threshold": 50, "min_interval": "0s", "lr": 3e-3, "rank": 4, "alpha": 8,
                "max_steps": 16, "max_epochs": 0, "warmup_steps": 2, "micro_batch": 2, "grad_accum": 1,
                "max_seq_len": 64, "dry_run_steps": 0, "checkpoint_steps": 8, "lease_size": "2GiB",
                # the tour shows the cycle in 16 steps, too few to recall: the gate is open
                "min_recall": 0.0, "forgetting_epsilon": 10.0, "general_epsilon": 10.0},
        }
        if use_docker:
            sections["containers"].update(
                docker_url=self.docker.engine.url, leak_window=f"{LEAK_WINDOW_S}s", leak_min_rate="256KiB/s",
                verify_after="3s", restart_cooldown="0s", stop_timeout="1s")
        self.config.write_text(toml(sections))

    def start_daemon(self, timeout: float = 30.0) -> list[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NOTIFY_", "WATCHDOG_", "LISTEN_", "JOURNAL_", "MEMWARDEN_"))}
        argv = [str(BIN / "memwardend"), "--config", str(self.config)]
        with self.daemon_log.open("ab") as log:
            self.daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.daemon.poll() is not None:
                raise StepFailed(f"memwardend exited {self.daemon.returncode} at start: {self.log_tail()}")
            try:
                with Client(self.socket, 5.0) as c:
                    c.call("status")
                return argv
            except (ConnectError, RpcError, OSError):
                if time.monotonic() >= deadline:
                    raise StepFailed(f"memwardend did not answer on {self.socket} within {timeout:g} s") from None
                time.sleep(0.1)  # the socket appears once the daemon is up: nothing to await from here

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (daemon.log_format = "json"), oldest first."""
        events = []
        text = self.daemon_log.read_text(errors="replace") if self.daemon_log.exists() else ""
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return [e for e in events if isinstance(e, dict)]

    def log_tail(self) -> str:
        """The daemon's last warning or error, in words."""
        bad = [e for e in self.log_events() if e.get("level") in ("warning", "error", "critical")]
        if not bad:
            return "no warning or error logged"
        last = bad[-1]
        return " ".join(f"{k}={v}" for k, v in last.items() if k not in ("timestamp", "logger"))[:300]

    def listeners(self) -> list[tuple[str, str, int]]:
        """(process name, address, port) of every TCP socket listening in the demo's processes."""
        out = []
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                for c in proc.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        out.append((proc.name(), c.laddr.ip, c.laddr.port))
        return sorted(set(out))

    # ---- stop -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """In order, each bounded; then every descendant left, whoever started it. Never raises."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)  # the daemon preempts its trainer and releases its leases
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait(5)
        if self.ollama is not None:
            with contextlib.suppress(Exception):
                self.ollama.stop()
        if self._init_demo is not None and self._init_demo.poll() is None:
            self._init_demo.kill()
            self._init_demo.wait(5)
        if self.docker is not None:
            self.docker.stop()
        sweep()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def sweep(grace: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL, every descendant still alive, and reap them; returns their pids."""
    left = psutil.Process().children(recursive=True)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in left]
