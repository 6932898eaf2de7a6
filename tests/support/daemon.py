"""Run the real memwardend as a subprocess, with a NOTIFY_SOCKET this side binds and reads."""

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
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from memwarden.control.client import Client

BIN = Path(sys.executable).parent
Notification = dict[str, str]


def short_tmpdir(prefix: str = "mw") -> Path:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


def toml_value(v: Any) -> str:
    """JSON is TOML for strings, numbers, booleans and arrays; a table is written inline."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket whose KEY=VALUE messages a thread keeps reading,
    as PID 1 does, so the daemon never meets a full queue."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[Notification] = []
        self._cursor = 0
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return  # shut down
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._arrived:
                self.messages.append(msg)
                self._arrived.notify_all()

    def wait_for(self, predicate: Callable[[Notification], bool], timeout: float = 20.0) -> Notification:
        """The next message (after those already matched) satisfying `predicate`."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                while self._cursor < len(self.messages):
                    msg = self.messages[self._cursor]
                    self._cursor += 1
                    if predicate(msg):
                        return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching notification in {timeout}s; got {self.messages}")
                self._arrived.wait(remaining)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv()
        self._reader.join(5)
        self.sock.close()


class DaemonProcess:
    def __init__(self, config: Mapping[str, Mapping[str, Any]] | None = None,
                 env: Mapping[str, str] | None = None, workdir: Path | None = None):
        self.workdir = workdir or short_tmpdir()
        self.socket_path = self.workdir / "control.sock"
        self.config_path = self.workdir / "memwarden.toml"
        sections: dict[str, dict[str, Any]] = {"daemon": {
            "state_dir": str(self.workdir / "state"), "socket": str(self.socket_path),
            "sample_interval": "200ms", "log_format": "json", "log_level": "debug"},
            # No GPU and no Ollama unless a test asks for them: their absence would be a degraded probe.
            "gpu": {"backend": "none"}, "ollama": {"url": ""}}
        for name, values in (config or {}).items():
            sections.setdefault(name, {}).update(values)
        self.sections = sections
        self.write_config(sections)
        self.notify = NotifyListener(self.workdir / "notify.sock")
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "daemon.log"

    def write_config(self, sections: Mapping[str, Mapping[str, Any]] | str) -> None:
        text = sections if isinstance(sections, str) else toml(sections)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NOTIFY_", "WATCHDOG_", "LISTEN_", "JOURNAL_", "MEMWARDEN_"))}
        env.update(NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1", **self.extra_env)
        return env

    def start_with(self, sections: dict[str, dict[str, Any]],
                   extra: Mapping[str, Mapping[str, Any]] | None = None) -> DaemonProcess:
        """Start on `sections` with `extra`'s keys laid over them, section by section."""
        for name, values in (extra or {}).items():
            sections.setdefault(name, {}).update(values)
        self.write_config(sections)
        self.sections = sections
        return self.start()

    def start(self, wait_ready: bool = True, argv: list[str] | None = None, **popen: Any) -> DaemonProcess:
        cmd = argv or [str(BIN / "memwardend"), "--config", str(self.config_path)]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=self.environment(), stdout=self._log, stderr=subprocess.STDOUT,
                                     **popen)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> Notification:
        try:
            return self.notify.wait_for(lambda m: m.get("READY") == "1", timeout)
        except TimeoutError:
            raise TimeoutError(f"memwardend never became ready; log:\n{self.log()}") from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.socket_path, timeout)

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        with self.client(timeout) as c:
            return c.call(method, params)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
