"""Binding the control socket: in a directory only this uid controls, replacing nothing but a stale socket."""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from pathlib import Path

from memwarden.dirs import PathError, ensure_private_dir, unwritable

HINT = "set daemon.socket (or XDG_RUNTIME_DIR) to a path in a directory of your own"


class SocketInUse(Exception):
    pass


class SocketPathTaken(PathError):
    """Something other than a socket is at the socket's path: a file, a directory, a symlink. It is left alone."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a socket"


def _clear_stale(path: Path) -> None:
    """Remove a socket nobody listens on; refuse a live one and anything that is not a socket.

    lstat(), never stat(): a symlink is refused, not followed, so no file elsewhere can be reached through it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        what = _kind(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            what += f" to {os.readlink(path)}"
        raise SocketPathTaken(f"{path} is {what}, not a socket; memwardend replaces only a stale socket there: "
                              f"move it away, or {HINT}")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        path.unlink(missing_ok=True)  # a socket with no listener: a daemon that did not stop cleanly
    else:
        raise SocketInUse(f"another memwardend is already listening on {path}")
    finally:
        probe.close()


def bind_unix(path: Path, group: str = "") -> socket.socket:
    """Bind the control socket at `path` (0660), replacing a stale one but never a live daemon's or a non-socket.

    The directory is made (0755) if missing and refused unless only this uid (or root) may change it: see
    memwarden.dirs. Checked before anything at `path` is looked at, so nobody can swap it in between."""
    ensure_private_dir(path.parent, f"fix its owner and mode (remove it if it is not yours), or {HINT}")
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # the socket is born 0660: no window where others may connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise unwritable(path.parent, exc, HINT) from None
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    if group:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except OSError as exc:
            sock.close()
            # The shipped unit forbids chown (SystemCallFilter=~@privileged): there the group comes from the
            # socket unit, which also makes this code path unused.
            raise OSError(exc.errno, f"cannot give {path} to group {group!r} (daemon.socket_group): "
                                     f"{exc.strerror}; under systemd set SocketGroup= in memwarden.socket") from None
    sock.listen(128)
    return sock
