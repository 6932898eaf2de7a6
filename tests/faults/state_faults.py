"""Helpers of the state-database fault tests: a small tmpfs, filling it, and memories to write."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the duration; skips when this machine may not mount one."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CAP_SYS_ADMIN)")
    path.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {run.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its filesystem has not one byte left; returns the file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            data = b"\0" * chunk
            while True:
                try:
                    os.write(fd, data)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def memory_lines(n: int, profile: str = "alice", size: int = 200, start: int = 0) -> list[str]:
    return [json.dumps({"profile": profile, "kind": "journal", "importance": 3,
                        "content": f"memory {i}: " + "x" * size}) for i in range(start, start + n)]


def active_state_alerts(daemon) -> list[dict]:
    return [a for a in daemon.call("alerts", {"limit": 1}, timeout=120)["active"] if a["kind"] == "state.database"]
