"""`make demo` end to end: the module run with this venv's python, as the Makefile runs it; every step's output
checked, and no process left behind, whether it ends normally or is stopped with SIGTERM half-way.

The demo runs under a small wrapper that is a child subreaper: anything the demo leaves running is re-parented
to the wrapper, which lists (and then kills) what is left once the demo has exited.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memwarden.sim import dockerd

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="the demo trains: the train extra (torch, transformers, peft) is not installed",
)

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = r"""
import ctypes, json, signal, subprocess, sys
import psutil
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
report, argv = sys.argv[1], sys.argv[2:]
demo = subprocess.Popen(argv)
signal.signal(signal.SIGTERM, lambda *_: demo.send_signal(signal.SIGTERM))
rc = demo.wait()
left = []
for p in psutil.Process().children(recursive=True):
    try:
        if p.status() != psutil.STATUS_ZOMBIE:
            left.append(" ".join(p.cmdline())[:200] or p.name())
            p.kill()
    except psutil.Error:
        pass
open(report, "w").write(json.dumps({"rc": rc, "left": left}))
"""


class Run:
    """The demo under the wrapper; its output collected line by line as it comes."""

    def __init__(self, tmp_path: Path, *args: str):
        self.report = tmp_path / "report.json"
        self.proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(self.report), sys.executable, "-m",
                                      "memwarden.demo", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r}; output:\n{self.text}")
            time.sleep(0.1)  # lines arrive from the reader thread: polled against a deadline

    def finish(self, timeout: float) -> dict:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the demo did not end within {timeout:g} s; output:\n{self.text}") from None
        self._reader.join(10)
        return json.loads(self.report.read_text())

    def workdir(self) -> Path:
        found = re.search(r"sim-GPU file (/tmp/mwdemo-[^/]+)/gpu\.json", self.text)
        assert found, self.text
        return Path(found.group(1))


def section(text: str, number: str) -> str:
    match = re.search(rf"^━━ {number}\..*?(?=^━━ |\Z)", text, re.M | re.S)
    assert match, f"no step {number} in:\n{text}"
    return match.group(0)


def test_the_demo_walks_every_step_exits_0_and_leaves_nothing(tmp_path, demo_base):
    """On the tests' cached demo base (--base): building one is init-demo's own test, and on a loaded machine its
    pre-training alone can outlast this test's bound."""
    run = Run(tmp_path, "--base", str(demo_base))
    report = run.finish(timeout=420)
    out = run.text
    assert report == {"rc": 0, "left": []}, out
    assert "Traceback" not in out
    assert not run.workdir().exists(), "the temporary directory was left behind"

    start = section(out, "0")
    assert "✓ resident: llama3.1:8b on GPU 0, qwen2.5:7b on GPU 1" in start
    assert re.search(r"✓ every server listens on loopback only: 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+$", start, re.M)
    assert "$ python -m memwarden.sim.ollama --listen 127.0.0.1:0" in start

    lease = section(out, "1")
    assert re.search(r"\$ \S*memwardenctl --socket \S+ lease 4GiB --holder demo-train -- ", lease)
    assert re.search(r"✓ granted on GPU \d, evicting \S+", lease)
    assert "✓ VRAM confirmed free before the grant" in lease
    assert re.search(r"✓ restored on release: .* serving downtime \d+\.\d s", lease)
    assert "released" in lease  # lease list's recent lease

    proxy = section(out, "2")
    assert re.search(r"\$ curl -s http://127\.0\.0\.1:\d+/api/generate", proxy)
    assert re.search(r"✓ held \d+\.\d s while lease \w+ held GPU \d, answered \d+\.\d s after it ended "
                     r"\(HTTP 200", proxy)

    containers = section(out, "3")
    missing = dockerd.requirements()
    if missing:
        skipped = [line for line in containers.splitlines() if "skipped:" in line]
        assert len(skipped) == 1 and "needs" in skipped[0], containers
    else:
        assert "✓ leak detected and leaky-server restarted" in containers, containers
        assert "✓ alert container.leak raised for leaky-server" in containers

    learning = section(out, "4")
    assert "imported 20 memories" in learning
    assert re.search(r"… run \S+ \(alice\): running, step \d+/\d+, loss \d", learning), "no live progress line"
    assert re.search(r"✓ run \S+ trained and promoted in \d+ s \(trigger threshold", learning)
    assert "✓ exported the adapter alone to the simulated Ollama: memwarden/alice:v1" in learning
    assert "✓ memwarden/alice:latest resident" in learning
    assert re.search(r"memwarden/alice:latest\s+yes", learning)  # memwardenctl models
    assert re.search(r"alice\s+promoted\s+threshold", learning)  # memwardenctl train history

    timing = out[out.index("━━ Timing"):]
    for step in ("start", "lease", "proxy", "containers", "learning", "total"):
        assert re.search(rf"^  {step}\s+\d+\.\d s", timing, re.M), timing
    assert out.rstrip().endswith("demo: done; every process stopped")
    # Every memwardenctl command shown names its socket, so a user can repeat it by hand.
    commands = [line for line in out.splitlines() if line.startswith("  $ ") and "memwardenctl " in line]
    assert commands and all("--socket " in line for line in commands)


def test_sigterm_while_the_base_builds_stops_every_process_and_removes_the_directory(tmp_path):
    """Half way through the start: the simulator up, the base model's pre-training (torch) under way."""
    run = Run(tmp_path, "--no-docker")
    run.wait_for_line(r"building the tiny offline base model", timeout=180)
    run.proc.send_signal(signal.SIGTERM)
    report = run.finish(timeout=90)
    assert report["left"] == [], run.text
    assert report["rc"] == 130, run.text
    assert "demo: interrupted; stopping everything" in run.text
    assert "Traceback" not in run.text
    assert not run.workdir().exists()
