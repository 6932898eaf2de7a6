"""The state file under a running daemon: deleted, moved or replaced at its path, noticed and written back.

SQLite keeps using the file it opened. If that file is unlinked (`rm`, a tmp cleaner) or another file is renamed
over it, every later write lands in an inode that is gone when the daemon stops. Each sample pass compares the
open file with its path: the link count of the open inode (fstat of a descriptor held on it) and the inode now
at the path. When they part, the open connection still sees everything, so SQLite's online backup API writes
it to a new file that is renamed onto the path, and the shared connection is swapped for one on that file:
every store holds the same `sqlite_utils.Database`, whose `conn` is the only thing that changes. A file that
someone else put at the path is moved aside (PATH.replaced-TIMESTAMP), never overwritten: the daemon's own state
goes back to the path, and nothing of either is lost.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from memwarden.logs import get_logger
from memwarden.state.db import connect

log = get_logger()

Inode = tuple[int, int]  # (st_dev, st_ino)
SIDE_FILES = ("-wal", "-shm")


class Verdict(StrEnum):
    IN_PLACE = "in_place"
    GONE = "gone"  # nothing at the path: deleted, or moved elsewhere
    REPLACED = "replaced"  # another file at the path


@dataclass(frozen=True)
class Placement:
    """Where the open state file is, as one pass sees it."""

    open_inode: Inode
    open_links: int  # 0: unlinked, and gone for good once the daemon closes it
    path_inode: Inode | None  # what the path names now (None: nothing)

    def log_fields(self) -> dict[str, Any]:
        return {"open_inode": list(self.open_inode), "open_links": self.open_links,
                "path_inode": list(self.path_inode) if self.path_inode else None}


def judge(p: Placement) -> Verdict:
    """Pure: is the open file still the one at the path?"""
    if p.path_inode is None:
        return Verdict.GONE
    if p.path_inode != p.open_inode or p.open_links == 0:
        return Verdict.REPLACED
    return Verdict.IN_PLACE


@dataclass(frozen=True)
class Restore:
    """The last time the state file had to be put back (or could not be)."""

    verdict: Verdict
    at: float
    placement: Placement
    moved_aside: tuple[tuple[str, str], ...] = ()  # (file found at the path, where it went)
    error: str | None = None  # the write-back failed (retried every pass); None: done
    count: int = 1  # times it happened since start


def _inode(st: os.stat_result) -> Inode:
    return (st.st_dev, st.st_ino)


def open_inodes() -> set[Inode]:
    """The inodes this process holds open (/proc/self/fd): which files at the path are SQLite's own."""
    found: set[Inode] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                found.add(_inode(os.stat(f"/proc/self/fd/{fd}")))
    return found


class StateFile:
    """Watches the open state file against its path and writes it back there when they part."""

    def __init__(self, db: Any, path: Path, clock: Callable[[], float] = time.time):
        self.db = db  # the shared sqlite_utils.Database; its .conn is swapped on a write-back
        self.path = path
        self.clock = clock
        # A descriptor of our own on the open inode, for its link count. Closed only after the connection on that
        # inode: closing any descriptor of a file drops the process's POSIX locks on it, SQLite's among them.
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.last: Restore | None = None
        self._attempts = 0

    def _watch(self, path: Path) -> None:
        """Hold the file the connection has just opened, after the old connection has closed (see __init__)."""
        os.close(self._fd)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def sense(self) -> Placement:
        st = os.fstat(self._fd)
        try:
            at_path: Inode | None = _inode(os.stat(self.path))
        except FileNotFoundError:
            at_path = None
        return Placement(_inode(st), st.st_nlink, at_path)

    def check(self) -> Restore | None:
        """One pass: write the state back if the path lost it. Never raises; a failure is in the Restore."""
        try:
            placement = self.sense()
        except OSError as exc:
            log.error("cannot check the state file", path=str(self.path), error=str(exc))
            return None
        verdict = judge(placement)
        if verdict is Verdict.IN_PLACE:
            return None
        with contextlib.suppress(sqlite3.Error):
            if self.db.conn.in_transaction:
                return None  # a transaction is open on the connection: back it up once it has ended, next pass
        log.error("decision: state file is not at its path, writing it back", decision="state.file",
                  verdict=verdict.value, path=str(self.path), **placement.log_fields())
        count = self.last.count + 1 if self.last else 1
        try:
            aside = self._write_back()
        except Exception as exc:  # noqa: BLE001 - any failure is reported and retried, never the pass's end
            self.last = Restore(verdict, self.clock(), placement, error=f"{type(exc).__name__}: {exc}", count=count)
            log.error("could not write the state file back", path=str(self.path), error=self.last.error)
        else:
            self.last = Restore(verdict, self.clock(), placement, aside, count=count)
            log.warning("state file written back to its path", path=str(self.path), moved_aside=list(aside),
                        verdict=verdict.value)
        return self.last

    def _write_back(self) -> tuple[tuple[str, str], ...]:
        path, old = self.path, self.db.conn
        self._attempts += 1  # a name per attempt: a failed one may leave the connection on its staging file
        stage = path.with_name(f"{path.name}.restore-{os.getpid()}-{self._attempts}")
        carried = path.with_name(f"{path.name}.carried-{os.getpid()}-{self._attempts}")
        for leftover in (stage, carried):
            _remove_with_side_files(leftover)
        # 1. Everything that can fail, done while the old connection still works: on failure nothing changed.
        try:
            _backup(old, stage, "main")
            temp_tables = old.execute("SELECT name, sql FROM temp.sqlite_master WHERE type = 'table'").fetchall()
            if temp_tables:  # staged imports live in temp tables of this connection: carry them over
                _backup(old, carried, "temp")
            aside = self._move_foreign_aside()
        except BaseException:
            _remove_with_side_files(stage)
            _remove_with_side_files(carried)
            raise
        # 2. Swap. The old connection is closed before the new file takes the name: on close SQLite removes the
        # -wal and -shm files *by name*, which must not be the new file's.
        old.close()
        try:
            os.replace(stage, path)
            _fsync_dir(path.parent)
            new = connect(path)
        except BaseException:
            # The state is in `stage` if the rename failed, else at the path: go on with whichever holds it, and
            # watch that file, so that the next pass writes it back to the path again.
            holder = stage if stage.exists() else path
            self.db.conn = connect(holder)
            self._watch(holder)
            raise
        self.db.conn = new
        self._watch(path)
        if temp_tables:
            try:
                _restore_temp(new, carried, temp_tables)
            finally:
                _remove_with_side_files(carried)
        return aside

    def _move_foreign_aside(self) -> tuple[tuple[str, str], ...]:
        """Files at the path (and its -wal, -shm) that are not the ones SQLite holds open go to
        PATH.replaced-TIMESTAMP[-wal|-shm]."""
        ours = open_inodes()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        moved = []
        for suffix in ("", *SIDE_FILES):
            name = self.path.with_name(self.path.name + suffix)
            try:
                inode = _inode(os.lstat(name))
            except FileNotFoundError:
                continue
            if inode in ours:
                continue
            target = self.path.with_name(f"{self.path.name}.replaced-{stamp}{suffix}")
            n = 1
            while os.path.lexists(target):  # replaced twice within a second: never overwrite the first
                n += 1
                target = self.path.with_name(f"{self.path.name}.replaced-{stamp}.{n}{suffix}")
            os.rename(name, target)
            moved.append((str(name), str(target)))
        return tuple(moved)

    def close(self) -> None:
        """After the connection is closed (see __init__)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _backup(source: sqlite3.Connection, target: Path, name: str) -> None:
    dest = sqlite3.connect(target)
    try:
        source.backup(dest, name=name)
        dest.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        dest.close()
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)  # on disk before it is renamed onto the path (no SQLite lock on this file any more)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _restore_temp(conn: sqlite3.Connection, carried: Path, tables: list[tuple[str, str]]) -> None:
    conn.execute("ATTACH DATABASE ? AS carried", [str(carried)])
    try:
        for name, sql in tables:
            conn.execute(sql.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
            conn.execute(f'INSERT INTO temp."{name}" SELECT * FROM carried."{name}"')
    finally:
        conn.execute("DETACH DATABASE carried")


def _remove_with_side_files(path: Path) -> None:
    for suffix in ("", *SIDE_FILES, "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
