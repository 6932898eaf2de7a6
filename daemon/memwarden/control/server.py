"""The control socket server: many concurrent clients, each a sequence of request lines (connection.py), admitted
by per-user quotas (admission.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from memwarden.control import admission
from memwarden.control.admission import Admission, Caller, ClientLimits
from memwarden.control.connection import Connection
from memwarden.control.listen import SocketInUse, bind_unix  # noqa: F401 (the daemon binds through here)
from memwarden.control.peer import Peer, may_change_state
from memwarden.control.protocol import (
    INTERNAL_ERROR,
    MAX_REPLY,
    ApplicationError,
    Request,
    RpcError,
    error_line,
    result_line,
)
from memwarden.control.registry import Registry
from memwarden.logs import get_logger
from memwarden.malloc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt

log = get_logger()

ACCEPT_BATCH = 64  # connections accepted per turn of the loop
REFUSAL_LOG_EVERY = 60.0  # seconds: one warning per uid and reason, then a count of the refusals in between
# asyncio's transports read into a fresh buffer of up to this many bytes on each wake-up (max_size), then shrink it.
READ_BUFFER = 256 * 1024
# Blocks over this are mapped on their own and unmapped when freed: larger than a read buffer, which then comes from
# the heap, with room above it kept there between reads.
MMAP_THRESHOLD = READ_BUFFER + 16 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def release_large_buffers() -> None:
    """Have glibc map every allocation over MMAP_THRESHOLD on its own and unmap it when freed, and keep up to
    TRIM_THRESHOLD free at the heap's top.

    Replies of megabytes come and go (pages of memories, kept while a slow client reads them). By default glibc
    raises its mmap threshold to the largest block freed, after which such blocks come from the heap and their
    memory stays with the process once freed: the daemon's RSS would keep the high-water mark of every burst.
    A threshold under the loop's read buffer would map, remap and unmap that buffer at every read (three system
    calls and two page faults a read, BENCHMARKS.md section 4); a trim threshold under it would give the heap's
    top back and take it again at every read. Elsewhere than glibc this does nothing."""
    mallopt({M_MMAP_THRESHOLD: MMAP_THRESHOLD, M_TRIM_THRESHOLD: TRIM_THRESHOLD})


class ControlServer:
    def __init__(self, registry: Registry, admin_group: str = "", limits: ClientLimits | None = None,
                 on_state_error: Callable[[sqlite3.Error, str], str] | None = None):
        self.registry = registry
        self.admin_group = admin_group  # both may change on reload; read at each connection and request
        self.limits = limits or ClientLimits()
        self.on_state_error = on_state_error  # StateHealth.failed: records it, returns the message in words
        self.connections: set[Connection] = set()
        self.by_uid: Counter[int] = Counter()
        self.others = 0  # connections of peers that are not operators (the reserve is kept from them)
        self.served = 0
        self.refused = 0
        self._refusals: dict[tuple[int, str], tuple[float, int]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._owned_path: Path | None = None

    @property
    def clients(self) -> int:
        return len(self.connections)

    async def start(self, sock: socket.socket, owned_path: Path | None) -> None:
        sock.setblocking(False)
        self._owned_path = owned_path
        release_large_buffers()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock, backlog=ACCEPT_BATCH)
        # The kernel's accept queue as long as it allows: a burst of connections from one user waits there to be
        # refused, rather than filling it and making everyone else's connect() wait. asyncio still takes at most
        # ACCEPT_BATCH of them per turn of the loop, so the requests of connections already open are served
        # between batches.
        sock.listen(socket.SOMAXCONN)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                conn.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self._owned_path is not None:
            self._owned_path.unlink(missing_ok=True)

    # ---- admission -------------------------------------------------------------------------------------

    def admit(self, conn: Connection) -> Admission:
        peer = conn.peer
        assert peer is not None
        own = os.getuid()
        caller = Caller(peer.uid, may_change_state(peer, self.admin_group, own), peer.uid in (0, own))
        now_open = admission.Open(len(self.connections), self.by_uid, self.others)
        verdict = admission.admit(caller, now_open, self.limits)
        if verdict.admitted:
            conn.operator = caller.operator
            self.connections.add(conn)
            self.by_uid[peer.uid] += 1
            self.others += not caller.operator
        else:
            self.refused += 1
            self._log_refusal(verdict, caller, now_open, peer)
        return verdict

    def forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            assert conn.peer is not None
            self.by_uid[conn.peer.uid] -= 1
            if self.by_uid[conn.peer.uid] <= 0:
                del self.by_uid[conn.peer.uid]
            self.others -= not conn.operator

    def _log_refusal(self, verdict: Admission, caller: Caller, now_open: admission.Open, peer: Peer) -> None:
        """A user hammering the socket gets one warning per REFUSAL_LOG_EVERY, not one per connection."""
        key = (caller.uid, verdict.reason)
        now = time.monotonic()
        last, since = self._refusals.get(key, (float("-inf"), 0))
        if now - last < REFUSAL_LOG_EVERY:
            self._refusals[key] = (last, since + 1)
            return
        self._refusals[key] = (now, 0)
        log.warning("control connection refused", **verdict.log_fields(caller, now_open, self.limits),
                    pid=peer.pid, refused_since_last_warning=since)

    # ---- requests --------------------------------------------------------------------------------------

    def cancellable(self, method: str) -> bool:
        """May a hang-up cancel this method mid-way? Unknown methods fail at once: nothing to cancel."""
        found = self.registry.methods.get(method)
        return found is None or found.cancellable

    async def call(self, request: Request, peer: Peer) -> bytes | None:
        """The reply line to one request (None for a notification); raises nothing but CancelledError."""
        try:
            # Checked per request: a reload may change the admin group while a client stays connected.
            admin = may_change_state(peer, self.admin_group)
            result = await self.registry.call(request.method, request.params, admin, peer)
        except RpcError as err:
            reply = error_line(None if request.is_notification else request.id, err)
        except sqlite3.Error as exc:
            # Disk full, locked or corrupt is not an internal error: the caller learns the file and what to do,
            # and the sample pass raises the state.database alert. SQLite rolled the write back; nothing is lost.
            what = self.on_state_error(exc, request.method) if self.on_state_error else f"state database: {exc}"
            log.error("control method failed on the state database", method=request.method, error=what)
            reply = error_line(request.id, ApplicationError(f"{request.method} failed: {what}"))
        except Exception as exc:
            log.exception("control method failed", method=request.method)
            reply = error_line(request.id, RpcError(INTERNAL_ERROR, f"internal error in {request.method}: {exc!r}"))
        else:
            self.served += 1
            try:
                reply = result_line(request.id, result)
            except (TypeError, ValueError) as exc:
                log.exception("control method returned what JSON cannot carry", method=request.method)
                reply = error_line(request.id, RpcError(INTERNAL_ERROR, f"internal error in {request.method}: "
                                                                        f"{exc!r}"))
            if len(reply) > MAX_REPLY:
                log.error("control reply over the limit, not sent", method=request.method, bytes=len(reply),
                          limit=MAX_REPLY)
                reply = error_line(request.id, ApplicationError(
                    f"{request.method}: the result is {len(reply):,} bytes, more than a reply may hold "
                    f"({MAX_REPLY:,}); ask for less"))
        return None if request.is_notification else reply
