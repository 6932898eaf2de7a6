"""The state database's health: a failed read or write (disk full, locked, corrupt) in words, and its alert.

Whoever meets a sqlite3.Error on the state database (a control method, a step of the sample pass, the alert
history) hands it to StateHealth.failed(), which keeps it and returns what to tell the user: the file, the cause
and what to do. SQLite rolls the failed transaction back, so nothing written before is lost; the daemon carries
on. Each sample pass calls check(), which clears the failure once its cause is gone (space freed, the lock
released), and conditions() is the `state.database` alert while it is not. Corruption stays until a restart.

check() also looks for the file itself (state/file_watch.py): deleted, moved or replaced under the running
daemon, it is written back to its path, and `state.file` (critical) says so for RESTORED_ALERT_HOLD; while the
write-back fails it says why and that stopping the daemon now would lose what the deleted file holds.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from memwarden.alerts.model import Condition
from memwarden.state.file_watch import Restore, StateFile, Verdict
from memwarden.units import format_size

# Below this much free space on the state's filesystem a "disk full" is not over: SQLite needs room to grow its
# write-ahead log, and a few KiB freed would only let the next write fail the same way.
FREE_MARGIN = 1 << 20

# Primary result codes (sqlite3.h); an extended code carries one in its low byte.
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 3, 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 11, 13, 14, 26

FULL, LOCKED, CORRUPT, OTHER = "disk_full", "locked", "corrupt", "error"

# A state file written back after it was deleted or replaced stays an alert this long: the daemon put it back,
# but whatever removed it (a tmp cleaner, a script, a person) is still out there and should be found.
RESTORED_ALERT_HOLD = 3600.0


def cause_of(exc: sqlite3.Error) -> str:
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == SQLITE_FULL:
        return FULL
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return LOCKED
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return CORRUPT
    return OTHER


def describe(path: Path, exc: sqlite3.Error, busy_timeout_s: float = 5.0) -> str:
    """One line: what failed, the file, and what to do about it."""
    cause = cause_of(exc)
    if cause == FULL:
        try:
            free = f"{format_size(shutil.disk_usage(path.parent).free)} free"
        except OSError:
            free = "free space unknown"
        return (f"state database write failed: {exc} ({path}, {free}); free some space on that filesystem — "
                "nothing written before is lost")
    if cause == LOCKED:
        return (f"state database write failed: {exc} ({path}): another process held it for more than "
                f"{busy_timeout_s:g}s (an sqlite3 shell or a backup?); nothing written before is lost")
    if cause == CORRUPT:
        return (f"state database is corrupt: {exc} ({path}); stop memwardend, move the file aside (or recover it "
                f"with `sqlite3 {path} .recover`) and start it again")
    return f"state database error: {exc} ({path})"


@dataclass(frozen=True)
class Failure:
    cause: str
    message: str
    what: str  # the method or sample-pass step that failed
    at: float
    count: int = 1


class StateHealth:
    def __init__(self, path: Path, db: Any, clock: Callable[[], float] = time.time,
                 busy_timeout_s: float = 5.0):
        self.path = path
        self.db = db
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        self.failure: Failure | None = None
        self.file = StateFile(db, path, clock)

    def failed(self, exc: sqlite3.Error, what: str) -> str:
        """Record a failure of `what`; returns the message for the caller (and the log)."""
        message = describe(self.path, exc, self.busy_timeout_s)
        cause = cause_of(exc)
        prior = self.failure
        if prior is not None and prior.cause == CORRUPT and cause != CORRUPT:
            cause, message = prior.cause, prior.message  # a later lock or full disk does not hide corruption
        self.failure = Failure(cause, message, what, prior.at if prior else self.clock(),
                               prior.count + 1 if prior else 1)
        return message

    def record_error(self, what: str) -> Callable[[Exception], None]:
        """A hook for a part that catches every exception: the database's own errors are recorded as failures
        of `what`, anything else is the part's to report."""
        def record(exc: Exception) -> None:
            if isinstance(exc, sqlite3.Error):
                self.failed(exc, what)
        return record

    def check(self) -> None:
        """Write the file back if it left its path; clear the failure once its cause is gone. Never blocks: the
        lock is tried without waiting."""
        self.file.check()
        f = self.failure
        if f is None or f.cause == CORRUPT:
            return  # corruption does not heal: the alert stays until the file is dealt with
        if f.cause == FULL:
            try:
                if shutil.disk_usage(self.path.parent).free < FREE_MARGIN:
                    return
            except OSError:
                return
        if self._writable():
            self.failure = None

    def _writable(self) -> bool:
        conn = self.db.conn
        if conn.in_transaction:
            return False  # someone is mid-transaction on our own connection: ask again next pass
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        """After the database is closed."""
        self.file.close()

    def conditions(self) -> list[Condition]:
        found = []
        f = self.failure
        if f is not None:
            found.append(Condition("state.database", str(self.path), "critical", f.message, MappingProxyType({
                "cause": f.cause, "failed": f.what, "failures": f.count, "since": f.at, "path": str(self.path)})))
        r = self.file.last
        if r is not None and (r.error is not None or self.clock() - r.at < RESTORED_ALERT_HOLD):
            found.append(Condition("state.file", str(self.path), "critical", file_message(self.path, r),
                                   MappingProxyType({
                                       "verdict": r.verdict.value, "at": r.at, "times": r.count,
                                       "moved_aside": [list(m) for m in r.moved_aside], "error": r.error,
                                       "path": str(self.path), **r.placement.log_fields()})))
        return found


def file_message(path: Path, r: Restore) -> str:
    what = "was deleted or moved" if r.verdict is Verdict.GONE else "was replaced by another file"
    if r.error is not None:
        return (f"state database {path} {what} while memwardend runs and could not be written back ({r.error}); "
                f"writes go to the open file meanwhile: do not stop memwardend, fix the cause (space? permissions "
                f"of {path.parent}?), it retries every pass")
    aside = f"; the file found there was moved to {r.moved_aside[0][1]}" if r.moved_aside else ""
    return (f"state database {path} {what} while memwardend ran; the daemon's state was written back from its "
            f"open connection, nothing lost{aside}; find what removed it")
