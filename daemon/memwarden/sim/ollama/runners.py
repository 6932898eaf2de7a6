"""What the scheduler schedules: the settings it runs by, one Runner per loaded model, and the runner process.

A runner is a real process (`_runner.py`, argv[0] "ollama", `runner --model BLOB`), so that memwarden finds it on
the (sim) GPU by pid and maps it to its model by the blob path, exactly as it does under Ollama. The process holds
no memory: the scheduler books its VRAM in the sim-GPU file under its pid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from .goformat import format_duration, rfc3339
from .models import ModelSpec, Registry

RUNNER_SCRIPT = Path(__file__).with_name("_runner.py")
RUNNER_MARKER = b"_runner.py\0runner\0"  # how a runner's /proc/PID/cmdline is recognised


class Busy(Exception):
    """Too many pending requests (OLLAMA_MAX_QUEUE)."""

    MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class LoadError(Exception):
    pass


@dataclasses.dataclass
class Settings:
    unload_linger: float = 2.0
    load_seconds: float = 0.05
    keep_alive_ns: int = 5 * 60 * 10**9
    max_loaded: int = 3
    max_queue: int = 512
    num_parallel: int = 1
    chunk_delay: float = 0.001
    response: str = "The sky is blue because molecules in the air scatter blue light more than red light."
    hang_loads: bool = False
    fail_loads: int = 0  # the next N loads fail with a 500, as when a runner crashes while loading
    vram_recovery_timeout: float = 5.0
    vram_poll_interval: float = 0.25
    vram_recovery_fraction: float = 0.75

    def public(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["keep_alive"] = format_duration(self.keep_alive_ns)
        return out


@dataclasses.dataclass(eq=False)
class Runner:
    spec: ModelSpec
    num_ctx: int
    keep_alive_ns: int
    size_vram: int
    slots: asyncio.Semaphore
    gpu: int = 0
    state: str = "loading"  # loading → loaded → unloading → exited
    proc: asyncio.subprocess.Process | None = None
    in_flight: int = 0
    expires_ns: int = 0
    loaded_at_ns: int = 0
    timer: asyncio.TimerHandle | None = None
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    exited: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    error: str | None = None
    unload_reason: str | None = None
    unload_started: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def expires_at(self) -> str:
        return rfc3339(self.expires_ns)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.spec.name, "pid": self.pid, "state": self.state, "alive": self.alive,
                "in_flight": self.in_flight, "size": self.spec.size, "size_vram": self.size_vram, "gpu": self.gpu,
                "keep_alive_ns": self.keep_alive_ns, "keep_alive": format_duration(self.keep_alive_ns),
                "expires_at": self.expires_at(), "context_length": self.num_ctx, "digest": self.spec.digest,
                "unload_reason": self.unload_reason}


async def spawn_runner(r: Runner, registry: Registry) -> asyncio.subprocess.Process:
    """Start the runner process, with the command line Ollama gives its runners (`--model`, `--lora`)."""
    argv = ["ollama", "-I", "-S", str(RUNNER_SCRIPT), "runner", "--model",
            str(registry.blob_path(r.spec.weights_digest)), "--ctx-size", str(r.num_ctx), "--port", "0"]
    for adapter in r.spec.adapters:
        argv += ["--lora", str(registry.blob_path(adapter.split(":", 1)[1]))]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OLLAMA_DOUBLE_SERVER_PID": str(os.getpid())}
    # stdin stays a pipe: the runner exits on its EOF, so it never outlives this server.
    return await asyncio.create_subprocess_exec(
        *argv, executable=sys.executable, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, env=env, start_new_session=False)
