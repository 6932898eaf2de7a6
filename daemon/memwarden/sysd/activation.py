"""Socket activation (LISTEN_FDS/LISTEN_PID), as sd_listen_fds(3) describes it."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping

SD_LISTEN_FDS_START = 3


def listen_fds(env: MutableMapping[str, str] | None = None, unset: bool = True) -> list[socket.socket]:
    """The sockets systemd passed to this process; [] when none were passed for us."""
    env = os.environ if env is None else env
    try:
        pid = int(env.get("LISTEN_PID", ""))
        count = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if unset:
        # Children must not think the sockets are theirs.
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            continue
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def unix_listener(sockets: list[socket.socket]) -> socket.socket | None:
    for sock in sockets:
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
            return sock
    return None
