"""One request to Ollama and its answer back, streamed in both directions over a pooled connection.

The request body goes up as it comes (a held body in one write; a client's stream chunk by chunk, each write
awaited, so a slow Ollama slows the client instead of filling memory), and the answer comes back the same way:
a Content-Length body piece by piece, a chunked one in Ollama's own chunks. A pooled connection that turns out
closed before an answer began is retried once on a new one when the body can be sent again (held or empty); a
streamed body is sent on a new connection from the start, since it cannot be.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from memwarden.logs import get_logger
from memwarden.proxy import http
from memwarden.proxy.upstream import Origin, Pool

log = get_logger()

Body = bytes | bytearray | memoryview | AsyncIterator[bytes] | None

# Ollama's final object ends with its durations and counts (a few hundred bytes after load_duration), so the
# answer's last bytes carry it whether the answer was streamed or whole; a longer tail would only cost copies.
TAIL_BYTES = 1024
_LOAD_DURATION = re.compile(rb'"load_duration"\s*:\s*(\d{1,20})')


def reported_load_ns(tail: bytes) -> int | None:
    """The load_duration (ns) in an answer's last bytes: the last one there, None when there is none or 0 (the
    model was resident)."""
    found = _LOAD_DURATION.findall(tail)
    ns = int(found[-1]) if found else 0
    return ns or None


class UpstreamFailed(Exception):
    """Ollama could not be reached, or broke off before its answer began: the client gets a 502."""


class ClientGone(Exception):
    """The client went away while its answer was being sent."""


@dataclass(frozen=True)
class Outcome:
    status: int
    keep_alive: bool  # the client connection may carry another request
    tail: bytes = b""  # the answer's last TAIL_BYTES, as received


class Connection:
    """A pooled connection to Ollama as a pair of streams, read and written by forward's coroutine."""

    @classmethod
    async def open(cls, origin: Origin) -> Connection:
        reader, writer = await asyncio.open_connection(origin.host, origin.port, ssl=origin.ssl or None,
                                                       limit=http.MAX_HEAD)
        return cls(reader, writer)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.pooled = False  # taken from the pool: Ollama may have closed it meanwhile
        self.idle_since = 0.0

    def usable(self) -> bool:
        # Bytes no request asked for (past an answer's end, or sent while idle) would be read as the next answer:
        # the connection cannot be trusted with it. StreamReader tells its buffered bytes to no public method.
        return not self.writer.is_closing() and not self.reader.at_eof() and not self.reader._buffer

    def close(self) -> None:
        self.writer.close()


def answer_head(resp: http.Head, length: int | None, chunked: bool, keep_alive: bool) -> bytes:
    """The answer's head for the client: Ollama's end-to-end headers, this hop's framing (the chunks passed on
    as they are, when `chunked`)."""
    out = resp.forwarded()
    if length is not None:
        out.append(("Content-Length", str(length)))
    elif chunked:
        out.append(("Transfer-Encoding", "chunked"))
    if not keep_alive:
        out.append(("Connection", "close"))
    return f"HTTP/1.1 {resp.start[1]} {resp.start[2]}".encode("latin-1") + http.encode_head("", out)


_FRAMING = frozenset({"content-length", "transfer-encoding"})


def passed_on(resp: http.Head, raw: bytes, keep_alive: bool) -> bytes | None:
    """The answer's head for the client as Ollama sent it, when that is what answer_head would say: an HTTP/1.1
    head whose only hop-by-hop headers are one framing header this hop keeps as it is (Go's net/http sends no
    other). A Connection: close is added when the client's connection ends with the answer. None: not so."""
    hop = resp.fields.keys() & http.HOP_BY_HOP
    if not raw.startswith(b"HTTP/1.1 ") or not hop <= _FRAMING or len(hop) > 1 or \
            any(len(resp.fields[name]) > 1 for name in hop):
        return None
    return raw if keep_alive else raw[:-2] + b"Connection: close\r\n\r\n"


async def _send_request(conn: Connection, head: bytes, body: Body, length: int | None) -> None:
    w = conn.writer
    if body is None or isinstance(body, bytes | bytearray | memoryview):
        w.write(head + bytes(body or b""))
    else:
        w.write(head)
        async for data in body:
            w.write(data if length is not None else http.chunk(data))
            await w.drain()
        if length is None:
            w.write(b"0\r\n\r\n")
    await w.drain()


async def _open(pool: Pool[Connection], head: bytes, body: Body, length: int | None) -> tuple[Connection, http.Head]:
    replayable = body is None or isinstance(body, bytes | bytearray | memoryview)
    conn = pool.take() if replayable else None
    while True:
        if conn is None:
            try:
                conn = await pool.connect()
            except (OSError, TimeoutError) as exc:
                raise UpstreamFailed(str(exc) or type(exc).__name__) from None
        try:
            await _send_request(conn, head, body, length)
            while True:
                resp = await http.read_head(conn.reader)
                if resp is None:
                    raise ConnectionResetError("closed before answering")
                if not resp.start[1].startswith("1"):  # an interim 1xx: the answer follows
                    return conn, resp
        except (OSError, asyncio.IncompleteReadError, http.BadMessage) as exc:
            conn.close()
            if not conn.pooled:
                raise UpstreamFailed(str(exc) or type(exc).__name__) from None
            conn = None  # a pooled connection Ollama had closed: once more on a new one


async def _to_client(writer: asyncio.StreamWriter, conn: Connection, data: bytes) -> None:
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionError, RuntimeError) as exc:
        conn.close()
        raise ClientGone(str(exc)) from None


async def forward(pool: Pool[Connection], method: str, target: str, headers: list[tuple[str, str]], body: Body,
                  length: int | None, writer: asyncio.StreamWriter, http11: bool, keep_alive: bool,
                  answered: Callable[[int], None] | None = None) -> Outcome:
    """Send the request and stream the answer to `writer`. UpstreamFailed when no answer began (the caller
    answers 502); once the answer's head is sent, a break cuts the client connection instead."""
    headers = [*headers, ("Host", pool.origin.authority)]
    if body is not None:
        headers.append(("Content-Length", str(length)) if length is not None else ("Transfer-Encoding", "chunked"))
    conn, resp = await _open(pool, http.encode_head(f"{method} {target} HTTP/1.1", headers), body, length)
    status = int(resp.start[1]) if resp.start[1].isdigit() else 502
    if answered is not None:
        answered(status)
    up_keep = resp.start[0] == "HTTP/1.1" and "close" not in resp.tokens("connection")
    try:
        up_length, up_chunked = resp.length, resp.chunked
    except http.BadMessage as exc:
        conn.close()
        raise UpstreamFailed(f"unreadable answer: {exc}") from None
    no_body = method == "HEAD" or status in (204, 304)
    relay: http.ChunkedRelay | None = None
    if no_body:
        pieces: AsyncIterator[bytes] | None = None
    elif up_length is not None:
        pieces = http.body(conn.reader, up_length, False)
    elif up_chunked and http11:
        relay = http.ChunkedRelay(conn.reader)
        pieces = aiter(relay)
    else:  # to an HTTP/1.0 client, or an answer that ends with its connection: the end is the close
        up_keep = up_keep and up_chunked
        keep_alive = False
        pieces = http.body(conn.reader, None, up_chunked, until_eof=not up_chunked)
    head = answer_head(resp, up_length, relay is not None, keep_alive)
    first = b""
    try:
        if up_length is not None and pieces is not None and up_length <= http.READ_SIZE:
            first = await conn.reader.readexactly(up_length)  # a small whole answer leaves in one write
            pieces = None
        elif relay is not None and pieces is not None:
            # The head leaves with the first piece, as Ollama sends them (Go's net/http writes the head at the
            # first flush): one write and one wake-up of the client fewer before its first streamed line.
            first = await anext(pieces, b"")
    except (OSError, asyncio.IncompleteReadError, http.BadMessage) as exc:  # nothing has reached the client
        conn.close()
        raise UpstreamFailed(f"answer broken before it began: {exc!r}"[:200]) from None
    tail = first[-TAIL_BYTES:]
    try:
        await _to_client(writer, conn, head + first)
        if pieces is not None:
            async for data in pieces:  # Ollama's side breaking raises here, the client's in _to_client
                await _to_client(writer, conn, data)
                tail = (tail + data)[-TAIL_BYTES:] if len(data) < TAIL_BYTES else bytes(data[-TAIL_BYTES:])
    except (OSError, asyncio.IncompleteReadError, http.BadMessage) as exc:
        # Mid-answer: the status is sent; cutting the client's connection short is all that is left to say.
        log.warning("proxied answer broken", target=target[:200], error=repr(exc)[:200])
        conn.close()
        return Outcome(status, False)
    if up_keep and not (relay is not None and relay.extra):
        pool.give(conn)
    else:
        conn.close()
    return Outcome(status, keep_alive, tail)
