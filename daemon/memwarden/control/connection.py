"""One client of the control socket: its requests answered in order, with bounded memory and time.

- Input. Complete request lines are queued, at most MAX_QUEUED bytes of them behind the one in flight; past
  that, reading pauses until the queue is served. A line over MAX_LINE bytes is refused (LINE_TOO_LONG), and so
  is one whose newline has not come `daemon.request_read_timeout` after its first byte (a client trickling a
  byte at a time); either way the connection is then closed, after the answers to the lines before it.
- Output. One request is served at a time, and the next only once the client has taken the previous reply: its
  unsent output is at most one reply, and a client that stops reading stops being served. A reply that makes no
  progress for WRITE_TIMEOUT drops the connection.
- Idle. A connection with nothing queued, in flight or unsent for `daemon.client_idle_timeout` is closed.
- Hang-up. The socket is read while a request is in flight. A hang-up (POLLHUP: the peer closed its end)
  cancels the request in flight when its method may be cancelled (read methods, and waits such as
  lease.acquire): nobody is left to hear the answer, and a wait must not hold its slot, or be granted, for a
  client that is gone. Any other state-changing method runs to its end, so that a change once begun is finished
  and recorded. A half-close (shutdown(SHUT_WR): the client has sent everything and waits for its answers)
  gets every answer, then the connection closes. While reading is paused, or after a half-close, the socket is
  polled for a hang-up every HANGUP_POLL seconds instead.
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from typing import Protocol

from memwarden.control.admission import Admission, ClientLimits
from memwarden.control.peer import Peer, peer_of
from memwarden.control.protocol import (
    BUSY,
    LINE_TOO_LONG,
    MAX_LINE,
    Request,
    RpcError,
    error_line,
    parse_request,
)
from memwarden.logs import get_logger

log = get_logger()

WRITE_TIMEOUT = 10.0  # seconds a reply may make no progress before the connection is dropped
MAX_QUEUED = 2 * MAX_LINE  # bytes of complete requests waiting behind the one in flight
HANGUP_POLL = 1.0  # seconds between hang-up checks when the socket is not being read


class _Refusal:
    """Queued in place of a request line: answer with this error, then close."""

    def __init__(self, err: RpcError):
        self.err = err


class Server(Protocol):
    """What a connection asks of the server that accepted it (server.py's ControlServer)."""

    limits: ClientLimits

    def admit(self, conn: Connection) -> Admission: ...

    def forget(self, conn: Connection) -> None: ...

    def cancellable(self, method: str) -> bool: ...

    async def call(self, request: Request, peer: Peer) -> bytes | None: ...


class Connection(asyncio.Protocol):
    def __init__(self, server: Server):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.admitted = False
        self.operator = False
        self._partial = bytearray()  # the start of a line whose newline has not come yet
        self._lines: deque[bytes | _Refusal] = deque()
        self._queued = 0
        self._reading = True
        self._refusing = False  # a refusal is queued: read nothing more
        self._ended = False  # the client shut down its sending side
        self._gone = False  # the client hung up, or the connection is closing
        self._wake = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._inflight: asyncio.Task | None = None
        self._cancellable = False
        self._last_active = self.loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._line_timer: asyncio.TimerHandle | None = None
        self._hangup_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    # ---- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        try:
            self.peer = peer_of(transport.get_extra_info("socket"))
        except OSError:
            transport.abort()
            return
        verdict = self.server.admit(self)
        if not verdict.admitted:
            self._gone = True
            transport.write(error_line(None, RpcError(BUSY, verdict.message)))
            transport.close()
            return
        self.admitted = True
        self._task = self.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._gone or self._refusing:
            return
        buf = self._partial
        buf += data
        if b"\n" in data:
            last = buf.rfind(b"\n")
            complete = bytes(buf[:last])
            del buf[:last + 1]
            for line in complete.split(b"\n"):
                if len(line) > MAX_LINE:
                    self._refuse(RpcError(LINE_TOO_LONG, f"request line exceeds {MAX_LINE} bytes; connection "
                                                         "closed"))
                    return
                if line.strip():
                    self._lines.append(line)
                    self._queued += len(line)
            self._wake.set()
            self._cancel(self._line_timer)
            self._line_timer = None
        if len(buf) > MAX_LINE:
            self._refuse(RpcError(LINE_TOO_LONG, f"request line exceeds {MAX_LINE} bytes; connection closed"))
            return
        if buf and self._line_timer is None:
            self._line_timer = self.loop.call_later(self.server.limits.read_timeout, self._line_expired)
        if self._queued > MAX_QUEUED:
            self._pause_reading()

    def eof_received(self) -> bool:
        if self._hung_up():
            self._hang_up()
            return False
        # A half-close: the client has sent everything and waits for the answers. A line it never finished
        # gets none (there is no request to answer).
        self._ended = True
        self._partial.clear()
        self._cancel(self._line_timer)
        self._wake.set()
        self._arm_hangup_poll()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._hang_up()
        for timer in (self._idle_timer, self._line_timer, self._hangup_timer):
            self._cancel(timer)
        self._writable.set()
        if self.admitted:
            self.admitted = False
            self.server.forget(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def abort(self) -> None:
        """Close at once, cancelling whatever is in flight (the daemon is stopping)."""
        self._gone = True
        for task in (self._inflight, self._task):
            if task is not None:
                task.cancel()
        if self.transport is not None:
            self.transport.abort()

    # ---- serving ---------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while (item := await self._next()) is not None:
                if isinstance(item, _Refusal):
                    self._send(error_line(None, item.err))
                    await self._drained()
                    break
                reply = await self._answer(item)
                if self._gone:
                    break
                if reply is not None:
                    self._send(reply)
                    reply = None  # the transport holds its own copy: one copy of a reply, not two
                    if not await self._drained():
                        break
        finally:
            self._close()

    async def _next(self) -> bytes | _Refusal | None:
        while not self._lines:
            if self._gone or self._ended:
                return None
            self._arm_idle()
            self._wake.clear()
            await self._wake.wait()
        if self._gone:
            return None  # nobody is left to answer
        item = self._lines.popleft()
        if isinstance(item, bytes):
            self._queued -= len(item)
            if not self._reading and not self._refusing and self._queued <= MAX_QUEUED // 2:
                self._reading = True
                self.transport.resume_reading()
        return item

    async def _answer(self, line: bytes) -> bytes | None:
        self._last_active = self.loop.time()
        try:
            request = parse_request(line)
        except RpcError as err:
            req_id = err.data.get("id") if isinstance(err.data, dict) else None
            err.data = None
            return error_line(req_id, err)
        assert self.peer is not None
        task = self.loop.create_task(self.server.call(request, self.peer))
        self._inflight, self._cancellable = task, self.server.cancellable(request.method)
        self._arm_hangup_poll()
        try:
            await asyncio.wait({task})
        finally:
            self._inflight = None
            self._last_active = self.loop.time()
        if task.cancelled():
            log.info("control request cancelled: the client hung up", method=request.method,
                     uid=self.peer.uid, pid=self.peer.pid)
            return None
        return task.result()

    def _send(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(memoryview(data))  # what the socket does not take at once is copied once

    async def _drained(self) -> bool:
        """Wait until the client has taken the reply (all but the transport's low-water mark)."""
        while not self._writable.is_set():
            unsent = self.transport.get_write_buffer_size()
            try:
                await asyncio.wait_for(self._writable.wait(), WRITE_TIMEOUT)
            except TimeoutError:
                if self.transport.get_write_buffer_size() >= unsent:
                    log.info("control client dropped: it stopped reading its reply", unsent_bytes=unsent,
                             uid=self.peer.uid if self.peer else None, timeout_s=WRITE_TIMEOUT)
                    self._gone = True
                    self.transport.abort()
                    return False
        return not self._gone

    def _close(self) -> None:
        self._gone = True
        if self.transport is not None and not self.transport.is_closing():
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # what it did not read in WRITE_TIMEOUT it never will
            else:
                self.transport.close()

    # ---- limits ----------------------------------------------------------------------------------------

    def _refuse(self, err: RpcError) -> None:
        self._refusing = True
        self._partial.clear()
        self._cancel(self._line_timer)
        self._lines.append(_Refusal(err))
        self._pause_reading()
        self._wake.set()

    def _line_expired(self) -> None:
        self._line_timer = None
        if self._partial and not self._gone and not self._refusing:
            timeout = self.server.limits.read_timeout
            log.info("control client dropped: a request line did not arrive whole in time", timeout_s=timeout,
                     uid=self.peer.uid if self.peer else None, partial_bytes=len(self._partial))
            self._refuse(RpcError(LINE_TOO_LONG, f"request line not complete {timeout:g}s after its first byte "
                                                 "(daemon.request_read_timeout); connection closed"))

    def _arm_idle(self) -> None:
        self._cancel(self._idle_timer)
        self._idle_timer = self.loop.call_at(self._last_active + self.server.limits.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._gone or self._lines or self._inflight is not None or self._partial:
            return  # busy: the serve loop re-arms the timer once it waits again
        timeout = self.server.limits.idle_timeout
        if self.loop.time() - self._last_active < timeout:  # a reload lengthened it
            self._arm_idle()
            return
        log.debug("control client closed: idle", uid=self.peer.uid if self.peer else None, timeout_s=timeout)
        self._gone = True
        self._wake.set()

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.transport.pause_reading()
        self._arm_hangup_poll()

    def _arm_hangup_poll(self) -> None:
        if self._hangup_timer is None and self._inflight is not None and (not self._reading or self._ended):
            self._hangup_timer = self.loop.call_later(HANGUP_POLL, self._poll_hangup)

    def _poll_hangup(self) -> None:
        self._hangup_timer = None
        if self._gone or self._inflight is None:
            return
        if self._hung_up():
            self._hang_up()
            self.transport.abort()
        else:
            self._arm_hangup_poll()

    def _hung_up(self) -> bool:
        """The peer has closed its end (not merely shut down its sending side)."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None or sock.fileno() < 0:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), 0)  # POLLHUP and POLLERR are always reported
        return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0))

    def _hang_up(self) -> None:
        if self._gone and self._inflight is None:
            return
        self._gone = True
        if self._inflight is not None and self._cancellable and not self._inflight.done():
            self._inflight.cancel()
        self._wake.set()

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
