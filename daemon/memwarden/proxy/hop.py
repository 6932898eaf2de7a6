"""One request to Ollama and its answer back to an HTTP/1.1 client, on asyncio Protocols: the thin hop.

A request whose body is held (or absent) goes up in one write on a pooled connection, and the connection's
protocol writes the answer's bytes to the client's transport as they arrive, in Ollama's own framing: no
StreamReader, no task and no coroutine step per direction, one event-loop wake-up per arrival. Its end is found
as the bytes pass (Content-Length counted, chunked framing scanned by http.ChunkScanner, or the close), and the
connection goes back to the pool. Flow control holds both ways: while the client's transport is over its
high-water mark, Ollama's connection is not read, so a slow reader never makes memory grow.

A pooled connection that turns out closed before a byte of its answer came is tried once more on a new one (the
body is held, so it can be sent again); an answer broken before any of it reached the client is a 502 for the
caller to give; one broken later cuts the client's connection, which is all that is left to say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from memwarden.logs import get_logger
from memwarden.proxy import http
from memwarden.proxy.forward import TAIL_BYTES, ClientGone, Outcome, UpstreamFailed, answer_head, passed_on
from memwarden.proxy.upstream import Origin, Pool

log = get_logger()

Done = Callable[[Outcome | UpstreamFailed | ClientGone], None]


class Client(Protocol):
    """The client connection an answer goes to: its transport, and whether it is over its high-water mark."""

    transport: asyncio.Transport
    paused: bool


class UpstreamConnection(asyncio.Protocol):
    """A pooled connection to Ollama whose protocol hands what arrives to the exchange it carries."""

    @classmethod
    async def open(cls, origin: Origin) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, origin.host, origin.port, ssl=origin.ssl or None)
        return conn

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.pooled = False  # taken from the pool: Ollama may have closed it meanwhile
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.upstream_data(data)
        else:  # bytes no request asked for: the connection cannot be trusted with the next one
            self.close()

    def eof_received(self) -> bool:
        return False  # the transport closes, and connection_lost tells the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.upstream_lost(exc)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Exchange:
    """A request sent and its answer relayed; `done` gets the Outcome, UpstreamFailed (nothing reached the
    client: answer 502) or ClientGone, exactly once."""

    def __init__(self, pool: Pool[UpstreamConnection], client: Client, method: str, request: bytes, keep_alive: bool,
                 done: Done, answered: Callable[[int], None] | None = None, want_tail: bool = False):
        self.pool = pool
        self.client = client
        self.method = method
        self.request = request
        self.keep_alive = keep_alive
        self.done = done
        self.answered = answered
        self.want_tail = want_tail
        self.conn: UpstreamConnection | None = None
        self.received = bytearray()  # the answer's head until it is whole
        self.out_head: bytes | None = None  # the head for the client, sent with the first piece of the body
        self.status = 0
        self.remaining: int | None = None  # Content-Length bytes still to come
        self.scanner: http.ChunkScanner | None = None
        self.framed = False  # the answer's head is read and its body's end known
        self.up_keep = False
        self.tail = b""
        self.over = False
        self.connect_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        conn = self.pool.take()
        if conn is None:
            self._connecting()
        else:
            self._send(conn)

    def _connecting(self) -> None:
        # The loop holds tasks weakly: the exchange keeps its own connecting task until it is done.
        self.connect_task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.pool.connect()
        except (OSError, TimeoutError) as exc:
            self._end(UpstreamFailed(str(exc) or type(exc).__name__))
            return
        if self.over:  # the client went away meanwhile
            self.pool.give(conn)
        else:
            self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        assert conn.transport is not None
        self.conn = conn
        conn.exchange = self
        if self.client.paused:
            conn.transport.pause_reading()
        conn.transport.write(self.request)

    # The flow control toward the client: its protocol calls these from pause_writing and resume_writing.
    def pause(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.pause_reading()

    def resume(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.resume_reading()

    def upstream_data(self, data: bytes) -> None:
        if not self.framed:
            if not self._head(data):
                return
            data, self.received = bytes(self.received), bytearray()
        self._relay(data)

    def _head(self, data: bytes) -> bool:
        """Read the answer's head from what came; whether its body's framing is known (then the rest of the
        bytes received are its first piece, in self.received)."""
        self.received += data
        while True:
            end = self.received.find(b"\r\n\r\n")
            if end < 0:
                if len(self.received) > http.MAX_HEAD:
                    self._broken_early("answer head too large")
                return False
            head = bytes(self.received[:end + 4])
            try:
                resp = http.parse_head(head)
            except http.BadMessage as exc:
                self._broken_early(f"unreadable answer: {exc}")
                return False
            del self.received[:end + 4]
            if not resp.start[1].startswith("1"):  # an interim 1xx: the answer follows
                break
        self.status = int(resp.start[1]) if resp.start[1].isdigit() else 502
        self.up_keep = resp.start[0] == "HTTP/1.1" and "close" not in resp.tokens("connection")
        try:
            length, chunked = resp.length, resp.chunked
        except http.BadMessage as exc:
            self._broken_early(f"unreadable answer: {exc}")
            return False
        if self.method == "HEAD" or self.status in (204, 304):
            self.remaining = 0
        elif length is not None:
            self.remaining = length
        elif chunked:
            self.scanner = http.ChunkScanner()
        else:  # the end is the close
            self.up_keep = self.keep_alive = False
        self.out_head = passed_on(resp, head, self.keep_alive) or \
            answer_head(resp, length, self.scanner is not None, self.keep_alive)
        self.framed = True
        return True

    def _tell_answered(self) -> None:
        """What the answer's head tells the proxy (the model resident, a load over), told once: after the
        answer's first bytes are on their way to the client, or when it ends without them."""
        answered, self.answered = self.answered, None
        if answered is not None and self.framed:
            answered(self.status)

    def _relay(self, data: bytes) -> None:
        ended = False
        extra = False
        if self.remaining is not None:
            if len(data) >= self.remaining:
                extra = len(data) > self.remaining
                data, ended = data[:self.remaining], True
            self.remaining -= len(data)
        elif self.scanner is not None:
            try:
                end = self.scanner.scan(data)
            except http.BadMessage as exc:
                self._broken(exc)
                return
            if end is not None:
                extra, data, ended = end < len(data), data[:end], True
        if self.out_head is not None:
            if not data and not ended:  # the head leaves with the first piece, as Ollama sends them
                return
            data, self.out_head = self.out_head + data, None
        if self.want_tail:
            self.tail = (self.tail + data)[-TAIL_BYTES:]
        transport = self.client.transport
        if transport.is_closing():
            self.client_gone()
            return
        transport.write(data)
        if self.answered is not None:
            self._tell_answered()
        if ended:
            self._finish(self.up_keep and not extra)

    def _finish(self, reuse: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            if reuse:
                if conn.transport is not None:  # a slow client may have paused it as the answer's last bytes went out
                    conn.transport.resume_reading()
                self.pool.give(conn)
            else:
                conn.close()
        self._end(Outcome(self.status, self.keep_alive, self.tail))

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.over:
            return
        conn, self.conn = self.conn, None
        if not self.framed:
            if conn is not None and conn.pooled and not self.received:  # Ollama closed it while pooled
                self._connecting()
                return
            self._end(UpstreamFailed("closed before answering" if exc is None else repr(exc)[:200]))
        elif self.remaining is None and self.scanner is None:  # an answer that ends with its connection
            self._relay_last()
        elif self.out_head is not None:
            self._end(UpstreamFailed(f"answer broken before it began: {exc!r}"[:200]))
        else:
            self._broken(exc or ConnectionResetError("closed mid-answer"))

    def _relay_last(self) -> None:
        if self.out_head is not None and not self.client.transport.is_closing():
            self.client.transport.write(self.out_head)
        self._end(Outcome(self.status, False, self.tail))

    def _broken_early(self, why: str) -> None:
        self._drop()
        self._end(UpstreamFailed(why))

    def _broken(self, exc: BaseException) -> None:
        log.warning("proxied answer broken", error=repr(exc)[:200])
        self._drop()
        self._end(Outcome(self.status, False))

    def client_gone(self) -> None:
        self._drop()
        self._end(ClientGone("client closed its connection"))

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.close()

    def _end(self, result: Outcome | UpstreamFailed | ClientGone) -> None:
        if not self.over:
            self.over = True
            self._tell_answered()
            self.done(result)
