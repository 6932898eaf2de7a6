"""Which executor runs the trainers: `learning.executor` resolved against where the daemon runs, then made.

auto is ray when `learning.ray_address` is set; else systemd when the daemon runs as a systemd service
(INVOCATION_ID set, the host booted with systemd) and the system bus socket is there to start units on; else
subprocess. ray is made by
memwarden.learning.ray_executor's `make_executor(config, runs_dir)`, imported only when chosen.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from memwarden.config import Config
from memwarden.learning.executor import Executor, SubprocessExecutor

SYSTEMD_BOOTED = Path("/run/systemd/system")  # sd_booted(3)
SYSTEM_BUS = Path("/run/dbus/system_bus_socket")
RAY_MODULE = "memwarden.learning.ray_executor"


class ExecutorUnavailable(ValueError):
    """learning.executor names an executor that cannot run here; the message says why."""


def resolve(setting: str, env: Mapping[str, str], exists: Callable[[Path], bool] = Path.exists) -> str:
    if setting != "auto":
        return setting
    under_systemd = bool(env.get("INVOCATION_ID")) and exists(SYSTEMD_BOOTED)
    bus = Path(env.get("DBUS_SYSTEM_BUS_ADDRESS", "").removeprefix("unix:path=") or SYSTEM_BUS)
    return "systemd" if under_systemd and exists(bus) else "subprocess"


def make_executor(config: Config, runs_dir: Path, env: Mapping[str, str] | None = None) -> Executor:
    if config.learning.executor == "auto" and config.learning.ray_address:
        kind = "ray"
    else:
        kind = resolve(config.learning.executor, os.environ if env is None else env)
    if kind == "subprocess":
        return SubprocessExecutor(runs_dir)
    if kind == "systemd":
        import psutil

        from memwarden.learning.systemd_bus import BusUnitManager
        from memwarden.learning.systemd_executor import SystemdExecutor

        return SystemdExecutor(BusUnitManager(), lambda: psutil.virtual_memory().total, config.host.reserve)
    try:
        module = importlib.import_module(RAY_MODULE)
    except ImportError as exc:
        raise ExecutorUnavailable(f"learning.executor: 'ray' needs {RAY_MODULE} ({exc})") from exc
    return module.make_executor(config, runs_dir)
