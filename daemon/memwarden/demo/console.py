"""What the tour prints: a heading per step, each command before it runs, its output trimmed, a ✓ per check.

The commands are run for real (memwardenctl over the control socket, curl-equivalent requests to the proxy), and
printed as a user would type them, so that each one can be repeated by hand while `--keep` holds the stack up.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwarden.sim.ollama import wait_until

MAX_LINES = 20  # of one command's output; the rest is counted, not shown


class StepFailed(Exception):
    """A check failed or a command did not do what the tour expects; the message says which, in one line."""


def shown_path(path: Path | str) -> str:
    """A path as the user would type it: relative to the current directory when it lies below it."""
    text = str(path)
    rel = os.path.relpath(text)
    return rel if not rel.startswith("..") else text


@dataclass
class Console:
    ctl: Path  # the memwardenctl to run
    socket: Path
    out: Any = sys.stdout
    timings: list[tuple[str, float, str]] = field(default_factory=list)  # (step, seconds, outcome)
    _step: str | None = None
    _t0: float = 0.0
    _progress_open: bool = False

    # ---- printing ---------------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        self._end_progress()
        print(text, file=self.out, flush=True)

    def heading(self, title: str) -> None:
        self.say()
        self.say(f"━━ {title}")

    def ok(self, text: str) -> None:
        self.say(f"  ✓ {text}")

    def note(self, text: str) -> None:
        self.say(f"  · {text}")

    def command(self, argv: list[str]) -> None:
        self.say(f"  $ {shlex.join(argv)}")

    def output(self, text: str) -> None:
        lines = text.rstrip("\n").splitlines()
        for line in lines[:MAX_LINES]:
            self.say(f"    {line[:150]}")
        if len(lines) > MAX_LINES:
            self.say(f"    … ({len(lines) - MAX_LINES} more lines)")

    def progress(self, text: str) -> None:
        """A live line: rewritten in place on a terminal, one line per change otherwise (a log, a test)."""
        if self.out.isatty():
            print(f"\r\x1b[2K  … {text}", end="", file=self.out, flush=True)
            self._progress_open = True
        else:
            print(f"  … {text}", file=self.out, flush=True)

    def _end_progress(self) -> None:
        if self._progress_open:
            print(file=self.out, flush=True)
            self._progress_open = False

    # ---- steps ------------------------------------------------------------------------------------------
    def begin(self, name: str, title: str) -> None:
        self._step, self._t0 = name, time.monotonic()
        self.heading(title)

    def end(self, outcome: str = "ok") -> None:
        if self._step is not None:
            self.timings.append((self._step, time.monotonic() - self._t0, outcome))
            self._step = None

    def summary(self, total: float) -> None:
        self.heading("Timing")
        for name, seconds, outcome in self.timings:
            self.say(f"  {name:<34} {seconds:6.1f} s  {outcome}")
        self.say(f"  {'total':<34} {total:6.1f} s")

    # ---- memwardenctl -----------------------------------------------------------------------------------
    def ctl_argv(self, *args: str) -> list[str]:
        return [shown_path(self.ctl), "--socket", shown_path(self.socket), *args]

    def run_ctl(self, *args: str, show: bool = True, timeout: float = 60.0, check: bool = True
                ) -> subprocess.CompletedProcess:
        argv = self.ctl_argv(*args)  # run as printed: relative paths resolve from the same directory
        if show:
            self.command(argv)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, start_new_session=True)
        if show:
            self.output(done.stdout + done.stderr)
        if check and done.returncode != 0:
            raise StepFailed(f"`{shlex.join(argv)}` exited {done.returncode}: "
                             f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or ''}")
        return done

    def ctl_json(self, *args: str, timeout: float = 30.0) -> Any:
        """The JSON result of a memwardenctl command, unprinted: what the ✓ lines check."""
        done = self.run_ctl("--json", *args, show=False, timeout=timeout)
        return json.loads(done.stdout)


def http(method: str, url: str, body: Any = None, timeout: float = 120.0) -> tuple[int, Any]:
    """One JSON request; (status, parsed body). A refused connection is a StepFailed, in one line."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise StepFailed(f"{method} {url}: {getattr(exc, 'reason', exc)}") from None


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll external state until `predicate()` is truthy (and return it); StepFailed after `timeout` s."""
    try:
        return wait_until(predicate, timeout, interval, message=what)
    except TimeoutError as exc:
        raise StepFailed(str(exc)) from None
