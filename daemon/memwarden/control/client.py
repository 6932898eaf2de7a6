"""A small blocking JSON-RPC client for memwardenctl, scripts and tests."""

from __future__ import annotations

import contextlib
import grp
import itertools
import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from memwarden.control.protocol import MAX_REPLY, RpcError, request_line
from memwarden.dirs import UnsafeDirectory, check_socket, client_trusted_uids

# The socket may be another user's, listening for what is sent to it (see memwarden.dirs).
TRUST_HINT = "whoever made it can read what you send; use the daemon's own socket (--socket or MEMWARDEN_SOCKET)"


class ConnectError(Exception):
    pass


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def denied(path: Path, st: os.stat_result | None) -> str:
    """Why connecting to `path` was refused and what to do, from the socket's owner and mode (`st`; None when
    the socket cannot even be looked at: its directory is closed to us)."""
    if st is None:
        return (f"permission denied on {path}: its directory {path.parent} is closed to you; ask the daemon's "
                "administrator, or run memwardenctl as the daemon's user")
    mode, group = stat.S_IMODE(st.st_mode), _group_name(st.st_gid)
    if st.st_gid == 0 or not mode & stat.S_IWGRP:
        # Joining root's group is no answer: the daemon must hand the socket to a group made for its users.
        return (f"permission denied on {path}: the socket belongs to group {group} (mode {mode:04o}), which "
                "is not for memwardenctl users; set daemon.socket_group (SocketGroup= in memwarden.socket under "
                "systemd) to a group such as memwarden, restart the daemon, and join that group")
    return (f"permission denied on {path}: the socket belongs to group {group}; join it "
            f"(sudo usermod -aG {group} $USER, then log in again)")


class Client:
    def __init__(self, path: Path, timeout: float | None = 30.0):
        self.path = Path(path)
        self._ids = itertools.count(1)
        try:
            check_socket(self.path, client_trusted_uids(os.geteuid()), TRUST_HINT)
        except UnsafeDirectory as exc:
            raise ConnectError(f"refusing to talk to {self.path}: {exc}") from None
        except OSError:
            pass  # nothing there (or unreadable): connect() below says which, in its words
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if timeout is not None:
            # A blocking connect waits while the daemon's accept queue is full (a flood of connections), up to
            # SO_SNDTIMEO; Python's own timeout would fail at once with EAGAIN.
            whole = int(timeout)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                  struct.pack("ll", whole, int((timeout - whole) * 1e6)))
        try:
            self._sock.connect(str(self.path))
        except BlockingIOError:
            self._sock.close()
            raise ConnectError(f"{self.path}: the daemon's queue of new connections stayed full for "
                               f"{timeout:g}s") from None
        except FileNotFoundError:
            self._sock.close()
            raise ConnectError(f"no control socket at {self.path} (is memwardend running?)") from None
        except ConnectionRefusedError:
            self._sock.close()
            raise ConnectError(f"nothing listens on {self.path} (memwardend stopped?)") from None
        except PermissionError:
            self._sock.close()
            try:
                st: os.stat_result | None = self.path.stat()
            except OSError:
                st = None
            raise ConnectError(denied(self.path, st)) from None
        self._sock.settimeout(timeout)
        self._file = self._sock.makefile("rb")

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        req_id = next(self._ids)
        # Refused (too many clients) and closed before the request went out: the refusal is there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._sock.sendall(request_line(method, params, req_id))
        line = self._file.readline(MAX_REPLY + 1)
        if not line:
            raise ConnectError("the daemon closed the connection without answering")
        if not line.endswith(b"\n"):
            if len(line) > MAX_REPLY:
                raise ConnectError(f"the daemon's reply exceeds {MAX_REPLY:,} bytes; connection dropped")
            raise ConnectError("the daemon closed the connection in the middle of its answer")
        reply = json.loads(line)
        if "error" in reply:
            err = reply["error"]
            raise RpcError(err.get("code", 0), err.get("message", "unknown error"), err.get("data"))
        return reply["result"]

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
