"""Fixtures shared by the suites that run the real memwardend (integration, faults)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import BIN, DaemonProcess

DEMO_TIMEOUT = 300


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


@pytest.fixture(scope="module")
def demo_base(tmp_path_factory) -> Path:
    """The tiny offline Llama base model (`memwardenctl model init-demo`), once per module; needs the train extra."""
    out = tmp_path_factory.mktemp("demo") / "base"
    run = subprocess.run([BIN / "memwardenctl", "model", "init-demo", str(out)], capture_output=True, text=True,
                         timeout=DEMO_TIMEOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    assert (out / "config.json").exists()
    return out
