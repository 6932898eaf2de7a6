"""Run code as a second, unprivileged user (`runuser -u nobody`), for the multi-user tests.

The interpreter that runs the suite may live where `nobody` cannot reach it (a pyenv build under /root), so the
other user gets the system's Python of the same version, with the checkout's package and the venv's
site-packages on PYTHONPATH: the same memwarden and the same libraries, run by another uid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

import memwarden

USER = "nobody"
# Debian's nobody has the primary group nogroup: a daemon whose socket_group is this lets nobody in.
GROUP = "nogroup"
PACKAGE_ROOT = Path(memwarden.__file__).resolve().parent.parent  # daemon/, holding memwarden/


def _python_for_others() -> str | None:
    """An interpreter of this Python's version that `nobody` can execute, or None."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if candidate and shutil.which(candidate) and _runs_as_other(candidate):
            return candidate
    return None


def _runs_as_other(python: str) -> bool:
    try:
        probe = subprocess.run(argv_as_other([python, "-c", "import json"]),
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


_PYTHON: list[str | None] = []


def other_python() -> str:
    """The interpreter for `nobody`; skips the test where this machine truly has none (not root, no runuser,
    no user nobody, no interpreter of this version outside a private home)."""
    if os.geteuid() != 0:
        pytest.skip("multi-user tests need root to run a client as another uid (runuser)")
    if shutil.which("runuser") is None:
        pytest.skip("multi-user tests need runuser (util-linux)")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"multi-user tests need the user {USER!r}")
    if not _PYTHON:
        _PYTHON.append(_python_for_others())
    if _PYTHON[0] is None:
        pytest.skip(f"no python{sys.version_info.major}.{sys.version_info.minor} that {USER!r} may execute")
    return _PYTHON[0]


def other_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    paths = [str(PACKAGE_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "LANG": "C.UTF-8",
           "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra or {})
    return env


def open_to_others(*paths: Path) -> None:
    """Let `nobody` traverse the directories on the way to a test's socket (mkdtemp makes them 0700)."""
    for path in paths:
        path.chmod(path.stat().st_mode | 0o711)


def argv_as_other(argv: list[str]) -> list[str]:
    return [shutil.which("runuser") or "runuser", "-u", USER, "--", *argv]


def run_as_other(code: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
                 **kwargs: Any) -> subprocess.CompletedProcess:
    """Run Python `code` as `nobody` (sys.argv[1:] = args) and wait for it."""
    return subprocess.run(argv_as_other([other_python(), "-c", code, *args]), env=other_env(env),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def spawn_as_other(code: str, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """Start Python `code` as `nobody` and return at once; the caller owns the process."""
    return subprocess.Popen(argv_as_other([other_python(), "-c", code, *args]), env=other_env(env), **kwargs)


def ctl_as_other(socket_path: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`memwardenctl --socket SOCKET ARGV…` run by `nobody`."""
    code = "import sys; from memwarden.cli.memwardenctl import main; sys.exit(main(sys.argv[1:]))"
    return run_as_other(code, "--socket", str(socket_path), *argv, timeout=timeout)
