"""Fixtures shared by the suites that run the real memwardend (integration, faults)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import BIN, DaemonProcess

DEMO_TIMEOUT = 300
# Enough pre-training for the demo base to speak its corpus's forms (a small round reaches its recall target in
# a few dozen steps), in a fraction of `model init-demo`'s default time: the suite builds it once.
TEST_PRETRAIN_STEPS = 150


@pytest.fixture
def make_daemon() -> Iterator:
    made: list[DaemonProcess] = []

    def factory(**kwargs) -> DaemonProcess:
        d = DaemonProcess(**kwargs)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.cleanup()


@pytest.fixture(scope="session")
def demo_base(tmp_path_factory) -> Path:
    """The tiny offline Llama base model (`memwardenctl model init-demo`), built once per session and only read;
    needs the train extra."""
    out = tmp_path_factory.mktemp("demo") / "base"
    run = subprocess.run([BIN / "memwardenctl", "model", "init-demo", str(out), "--pretrain-steps",
                          str(TEST_PRETRAIN_STEPS)], capture_output=True, text=True, timeout=DEMO_TIMEOUT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    assert (out / "config.json").exists() and (out / "general_probe.jsonl").exists()
    return out
