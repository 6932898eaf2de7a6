"""Start and drive the Ollama simulator as a real separate process, from the demo, tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from memwarden.gpu import simfile

from .runners import RUNNER_MARKER

GiB = 1024**3
T = TypeVar("T")


def sim_gpu(path: Path | str, total_bytes: int = 12 * GiB, index: int = 0, name: str | None = None,
            extra_gpus: Iterable[dict[str, Any]] = ()) -> Path:
    """Create a sim-GPU file with one GPU (plus `extra_gpus`), as simfile.create does."""
    path = Path(path)
    gpus = [{"index": index, "name": name or f"Sim {total_bytes // GiB}G", "total_bytes": total_bytes},
            *extra_gpus]
    simfile.create(path, gpus)
    return path


def bookings(path: Path | str, index: int = 0, alive_only: bool = True) -> dict[int, int]:
    """pid → booked bytes on GPU `index`; by default only live pids count, as the sim-file contract says."""
    for gpu in simfile.read(Path(path))["gpus"]:
        if gpu["index"] == index:
            return {p["pid"]: p["used_bytes"] for p in gpu["processes"]
                    if not alive_only or simfile.pid_alive(p["pid"])}
    raise simfile.SimFileError(f"{path}: no GPU with index {index}")


def gpu_used(path: Path | str, index: int = 0) -> int:
    """Used bytes on GPU `index`: the sum over listed processes still alive."""
    return sum(bookings(path, index).values())


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               message: str | Callable[[], str] = "condition") -> T:
    """Poll `predicate` until it returns something truthy (and return that), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        """An NDJSON body as a list of objects."""
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip()


class OllamaSim:
    """The simulator as a subprocess: `OllamaSim(sim, models).start()`, then `.url`; `.stop()` or a `with` block.

    models: a list of model dicts (see the package docstring) or a path to such a JSON file.
    """

    def __init__(self, sim_file: Path | str, models: list[dict[str, Any]] | Path | str | None,
                 gpu: int | Iterable[int] | str = 0, *,
                 unload_linger: float = 2.0, load_seconds: float = 0.05, keep_alive: str | int | float = "5m",
                 max_loaded: int = 0, max_queue: int = 512, num_parallel: int = 1, chunk_delay: float = 0.001,
                 response: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 workdir: Path | str | None = None, exit_with_parent: bool = True,
                 extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None, new_session: bool = False):
        self.sim_file = Path(sim_file)
        self.gpu = gpu
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="od", dir="/tmp"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if models is None:  # the models come as --model NAME=SIZE in extra_args
            self.models_file = None
        elif isinstance(models, str | Path):
            self.models_file = Path(models)
        else:
            self.models_file = self.workdir / "models.json"
            self.models_file.write_text(json.dumps(list(models), indent=1))
        self.models_dir = self.workdir / "models"
        self.log_path = self.workdir / "ollama-sim.log"
        if not isinstance(keep_alive, str):  # OLLAMA_KEEP_ALIVE takes a Go duration or whole seconds
            keep_alive = f"{keep_alive}s"
        gpus = gpu if isinstance(gpu, int | str) else ",".join(map(str, gpu))
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.argv = [sys.executable, "-m", "memwarden.sim.ollama", "--listen", listen,
                     "--sim-file", str(self.sim_file), "--gpu", str(gpus),
                     "--models-dir", str(self.models_dir), "--unload-linger", str(unload_linger),
                     "--load-seconds", str(load_seconds), "--keep-alive", str(keep_alive),
                     "--max-loaded", str(max_loaded), "--max-queue", str(max_queue),
                     "--num-parallel", str(num_parallel), "--chunk-delay", str(chunk_delay)]
        if self.models_file is not None:
            self.argv += ["--models", str(self.models_file)]
        if response is not None:
            self.argv += ["--response", response]
        if exit_with_parent:
            self.argv.append("--exit-with-parent")
        self.argv += list(extra_args)
        self.extra_env = dict(env or {})
        self.new_session = new_session  # out of the terminal's process group: a Ctrl-C reaches the caller only
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.port = 0
        self._log = None

    # ---- lifecycle ----
    def start(self, timeout: float = 20.0) -> OllamaSim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        self._log = self.log_path.open("ab")
        # PR_SET_PDEATHSIG (--exit-with-parent) fires when the *thread* that started us exits: start from a
        # long-lived thread (pytest's main thread is fine), or pass exit_with_parent=False.
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, start_new_session=self.new_session)
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise TimeoutError(f"the Ollama simulator did not report its port in {timeout}s; log:\n{self.log()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(5)
                    raise RuntimeError(f"the Ollama simulator exited ({self.proc.returncode}); log:\n{self.log()}")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        prefix = "listening on "
        if not line.startswith(prefix):
            self.kill()
            raise RuntimeError(f"unexpected first line from the Ollama simulator: {line!r}")
        self.url = line[len(prefix):].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the simulator kills and unbooks its runners), wait; SIGKILL after `timeout`. Returns the exit
        code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap_runners()
        self._close_files()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the server only, as a crash would. Its runners die with it (PR_SET_PDEATHSIG, stdin EOF);
        their bookings stay in the sim file under dead pids, which count as free."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_files()

    def cleanup(self) -> None:
        """stop(), then remove the work dir if this manager made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OllamaSim:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _close_files(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _reap_runners(self) -> None:
        """Any runner still alive after the server ended (it should not be) is killed by pid."""
        for pid in self.runner_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not self.runner_pids(), timeout=5, message="runners to exit")

    def runner_pids(self) -> list[int]:
        """Live runner processes of this simulator (loaded, loading or lingering after an unload), found in /proc by
        their `--model <this simulator's models dir>/…` argument, so it works after `kill()` too."""
        marker = f"{self.models_dir}/blobs/".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if RUNNER_MARKER in cmdline and marker in cmdline and simfile.pid_alive(int(entry)):
                pids.append(int(entry))
        return sorted(pids)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---- HTTP ----
    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0,
                data: bytes | None = None) -> Reply:
        """One HTTP request; never raises for an HTTP error status (look at .status)."""
        if data is None and body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return Reply(exc.code, dict(exc.headers), exc.read())

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    def ps(self) -> list[dict[str, Any]]:
        return self.get("/api/ps").json()["models"]

    def tags(self) -> list[dict[str, Any]]:
        return self.get("/api/tags").json()["models"]

    def generate(self, model: str, prompt: str = "", keep_alive: Any = ..., stream: bool = False,
                 **fields: Any) -> Reply:
        body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": stream, **fields}
        if keep_alive is not ...:
            body["keep_alive"] = keep_alive
        return self.post("/api/generate", body)

    def load(self, model: str, keep_alive: Any = ...) -> dict[str, Any]:
        """Empty prompt: load (done_reason "load"). Raises on an HTTP error."""
        reply = self.generate(model, "", keep_alive)
        if reply.status != 200:
            raise RuntimeError(f"load {model}: HTTP {reply.status}: {reply.body[:300]!r}")
        return reply.json()

    def unload(self, model: str) -> dict[str, Any]:
        """Empty prompt + keep_alive 0: answered at once, BEFORE the runner lets go of its VRAM."""
        reply = self.generate(model, "", 0)
        if reply.status != 200:
            raise RuntimeError(f"unload {model}: HTTP {reply.status}: {reply.body[:300]!r}")
        return reply.json()

    # ---- test hooks ----
    def state(self) -> dict[str, Any]:
        return self.get("/_sim/state").json()

    def configure(self, **settings: Any) -> dict[str, Any]:
        """POST /_sim/config: unload_linger, load_seconds, hang_loads, fail_loads, chunk_delay, response,
        keep_alive, max_loaded, max_queue, num_parallel, vram_recovery_timeout, vram_poll_interval."""
        reply = self.post("/_sim/config", settings)
        if reply.status != 200:
            raise ValueError(reply.json().get("error"))
        return reply.json()

    def clear(self) -> None:
        self.post("/_sim/clear", {})
