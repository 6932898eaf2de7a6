"""Where the config, state and control socket live, per the design contract.

Every function takes the environment as a mapping so tests and systemd units resolve paths the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSTEM_CONFIG = Path("/etc/memwarden/memwarden.toml")


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def config_candidates(env: Mapping[str, str], uid: int) -> tuple[Path | None, bool]:
    """The config file to read and whether it must exist.

    An explicit choice ($MEMWARDEN_CONFIG) must exist; the default location may be absent, in which case the
    daemon runs on its embedded defaults.
    """
    if env.get("MEMWARDEN_CONFIG"):
        return Path(env["MEMWARDEN_CONFIG"]), True
    if env.get("CONFIGURATION_DIRECTORY"):
        # systemd's ConfigurationDirectory=: the unit runs as User=memwarden, whose home is not where the
        # admin edits the config.
        return Path(env["CONFIGURATION_DIRECTORY"].split(":")[0]) / "memwarden.toml", False
    if uid == 0:
        return SYSTEM_CONFIG, False
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else _home(env) / ".config"
    return base / "memwarden" / "memwarden.toml", False


def default_state_dir(env: Mapping[str, str]) -> Path:
    if env.get("STATE_DIRECTORY"):
        # systemd passes a colon-separated list when StateDirectory= names several.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else _home(env) / ".local" / "state"
    return base / "memwarden"


def _runtime_base(env: Mapping[str, str], uid: int) -> Path:
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "memwarden"
    if uid == 0:
        return Path("/run/memwarden")
    # In the shared /tmp anyone may create this directory first: bind_unix() and memwardenctl use it only if it
    # is this uid's (or root's) and no one else may write it (memwarden.dirs).
    return Path(f"/tmp/memwarden-{uid}")


def default_socket(env: Mapping[str, str], uid: int) -> Path:
    return _runtime_base(env, uid) / "control.sock"


def client_socket(env: Mapping[str, str], uid: int) -> Path:
    """The socket memwardenctl talks to: $MEMWARDEN_SOCKET, else the daemon's default for this user.

    Root's client also finds a system daemon's socket under /run/memwarden when no user daemon is there.
    """
    if env.get("MEMWARDEN_SOCKET"):
        return Path(env["MEMWARDEN_SOCKET"])
    own = default_socket(env, uid)
    system = Path("/run/memwarden/control.sock")
    if not own.exists() and system.exists():
        return system
    return own
