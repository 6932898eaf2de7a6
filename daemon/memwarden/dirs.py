"""The directories memwarden trusts with its control socket and its state, and the one-line refusals.

A socket's directory decides who can put something else at the socket's name. memwardend binds only in a
directory owned by its own uid (or root) that no group or other user may write, reached through directories
that are equally safe, except that a sticky directory (`/tmp`, mode 1777) is fine on the way: there nobody may
rename or delete what another user made. memwardenctl applies the same rule before it connects, trusting root,
itself and the packaged daemon's user (`memwarden`): a socket in a directory someone else controls may be
theirs, listening for what you send.

Directories memwardend writes (the state directory, the socket's) are checked before use, so that a missing
permission or a read-only filesystem is one line naming the directory and what to do, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

SYSTEM_USER = "memwarden"  # packaging/deb/sysusers.conf: the user the packaged daemon runs as
MAX_SYMLINKS = 40  # as the kernel's own limit on links followed in one lookup (ELOOP)


class PathError(Exception):
    """A path memwarden cannot or will not use; str() is one line: the path, why, and what to do."""


class UnsafeDirectory(PathError):
    """The directory (or one on the way to it) could let another user swap what is inside."""


class Unwritable(PathError):
    """The daemon cannot create or write a directory (or a file in it): permissions, or a read-only filesystem."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def describe(st: os.stat_result) -> str:
    """Owner, group and mode as a person checks them: `owner nobody, group nogroup, mode 0777`."""
    return (f"owner {user_name(st.st_uid)}, group {_group_name(st.st_gid)}, "
            f"mode {stat.S_IMODE(st.st_mode):04o}")


def system_user_uid() -> int | None:
    try:
        return pwd.getpwnam(SYSTEM_USER).pw_uid
    except KeyError:
        return None


def client_trusted_uids(uid: int) -> frozenset[int]:
    """Whom memwardenctl trusts to own the socket and its directories: root, the caller, the packaged daemon."""
    system = system_user_uid()
    return frozenset({0, uid} | ({system} if system is not None else set()))


def unsafe_reason(st: os.stat_result, trusted: Collection[int], *, last: bool) -> str | None:
    """Why one step on the way to a socket is unsafe, or None. `last`: the socket's own directory.

    Pure: the decision on one lstat() result. A symlink counts by its owner (only the owner may change where it
    points); a directory also by who may write it.
    """
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        if st.st_uid not in trusted:
            return "is a symbolic link owned by another user"
        return None
    if not stat.S_ISDIR(mode):
        return "is not a directory"
    if st.st_uid not in trusted:
        return "is owned by another user"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        if last:
            return "is writable by its group or by others"
        if not mode & stat.S_ISVTX:
            return "is writable by its group or by others and not sticky"
    return None


def walk(path: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every directory and symlink the kernel meets resolving absolute `path`, in order, each with its lstat().

    Symlinks are followed as the kernel follows them (a relative target from the link's directory), so a link
    anywhere on the way is seen, and so is everything it leads through.
    """
    current = Path("/")
    yield current, os.lstat(current)
    pending = list(Path(os.path.abspath(path)).parts[1:])
    hops = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent  # already checked on the way down
            continue
        step = current / name
        st = os.lstat(step)
        yield step, st
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
            target = Path(os.readlink(step))
            if target.is_absolute():
                current = Path("/")
            pending[:0] = list(target.parts[1:] if target.is_absolute() else target.parts)
            continue
        current = step


def _refusal(step: Path, st: os.stat_result, why: str, directory: Path, trusted: Collection[int],
             hint: str) -> UnsafeDirectory:
    where = "" if step == directory else f" (on the way to {directory})"
    owners = ", ".join(user_name(u) for u in sorted(trusted))
    return UnsafeDirectory(f"{step}{where} {why} ({describe(st)}); memwarden uses only directories owned by "
                           f"{owners} that no one else may write: {hint}")


def check_trusted(directory: Path, trusted: Collection[int], hint: str) -> None:
    """Refuse `directory` (UnsafeDirectory) unless it and every step to it pass unsafe_reason().

    `hint` says what to do instead (which key or option to set). Steps are checked as they are met, so a
    directory that does not exist (FileNotFoundError) is reported only if everything before it is safe."""
    last: tuple[Path, os.stat_result] | None = None
    for step, st in walk(directory):
        why = unsafe_reason(st, trusted, last=False)
        if why is not None:
            raise _refusal(step, st, why, directory, trusted, hint)
        last = (step, st)
    assert last is not None
    step, st = last
    why = unsafe_reason(st, trusted, last=True) or (None if stat.S_ISDIR(st.st_mode) else "is not a directory")
    if why is not None:
        raise _refusal(step, st, why, directory, trusted, hint)


def check_socket(path: Path, trusted: Collection[int], hint: str) -> None:
    """memwardenctl's rule before it connects: the socket's directory (and, if `path` is a symlink, the link
    and its target's directory) pass check_trusted(), and the socket is owned by a trusted uid.
    FileNotFoundError when something on the way is missing (the connect then says there is no socket)."""
    path = Path(os.path.abspath(path))
    check_trusted(path.parent, trusted, hint)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in trusted:
            raise _refusal(path, st, "is a symbolic link owned by another user", path, trusted, hint)
        path = Path(os.path.realpath(path))
        check_trusted(path.parent, trusted, hint)
        st = os.lstat(path)
    if st.st_uid not in trusted:
        raise UnsafeDirectory(f"{path} is owned by another user ({describe(st)}); memwarden talks only to a socket "
                              f"owned by {', '.join(user_name(u) for u in sorted(trusted))}: {hint}")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def unwritable(path: Path, exc: OSError, hint: str, uid: int | None = None) -> Unwritable:
    """The one-line refusal for `path` that could not be created or written (`exc` says how)."""
    uid = os.geteuid() if uid is None else uid
    if exc.errno == errno.EROFS:
        return Unwritable(f"{path} is on a read-only filesystem: remount it read-write, or {hint}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        blocker = _nearest_existing(path if os.path.lexists(path) else path.parent)
        try:
            owner = f" ({describe(os.stat(blocker))})"
        except OSError:
            owner = ""
        made = "" if blocker == path else f"cannot create {path}: "
        return Unwritable(f"{made}{blocker} is not writable by {user_name(uid)} (uid {uid}){owner}: "
                          f"make it writable for uid {uid}, or {hint}")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return Unwritable(f"{_nearest_existing(path)} is not a directory: move it aside, or {hint}")
    return Unwritable(f"{path}: {exc.strerror or exc}: {hint}")


def make_dirs(path: Path, mode: int, hint: str) -> None:
    """mkdir -p with `mode` on the last directory; Unwritable names the one that could not be made."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as exc:
        raise unwritable(path, exc, hint) from None
    if not path.is_dir():
        raise unwritable(path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), hint)


def ensure_private_dir(path: Path, hint: str, mode: int = 0o755) -> None:
    """The socket's directory: made if missing (`mode`), then refused unless owned by this uid or root and
    writable by no one else, all the way from /."""
    make_dirs(path, mode, hint)
    check_trusted(path, {0, os.geteuid()}, hint)


def ensure_writable_dir(path: Path, hint: str, mode: int = 0o750) -> None:
    """A directory the daemon writes: made if missing, then a file created and removed in it, which is the
    only test that sees permissions, ACLs, root's override and read-only mounts the way the writer will."""
    make_dirs(path, mode, hint)
    try:
        fd, probe = tempfile.mkstemp(prefix=".memwarden-probe-", dir=path)
    except OSError as exc:
        raise unwritable(path, exc, hint) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
