"""Who is on the other end of a unix socket (SO_PEERCRED), and whether they may change state."""

from __future__ import annotations

import grp
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    def groups(self, proc_root: Path = Path("/proc")) -> set[int]:
        """Primary and supplementary groups, read from /proc so membership is the process's, not the
        group file's (a login that predates a usermod keeps its old groups)."""
        gids = {self.gid}
        try:
            for line in (proc_root / str(self.pid) / "status").read_text().splitlines():
                if line.startswith("Groups:"):
                    gids.update(int(g) for g in line.split()[1:])
        except (OSError, ValueError):
            pass
        return gids


def peer_of(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", creds))


def may_change_state(peer: Peer, admin_group: str, own_uid: int | None = None) -> bool:
    own_uid = os.getuid() if own_uid is None else own_uid
    if peer.uid in (0, own_uid):
        return True
    if not admin_group:
        return False
    try:
        gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:
        return False
    return gid in peer.groups()
