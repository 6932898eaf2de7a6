"""HTTP/1.1 framing for the proxy, over asyncio streams: heads parsed, bodies relayed as their bytes arrive.

Only what a forwarding proxy needs: a message head (start line and headers) and where its body ends
(Content-Length, chunked, or the connection's close). Bodies are never gathered here: the caller gets them chunk
by chunk, and a chunked answer goes to an HTTP/1.1 client in the very bytes Ollama sent, so a streamed NDJSON
line leaves the proxy as soon as it arrives. Framing that could be read two ways (both Content-Length and
Transfer-Encoding, a Transfer-Encoding other than chunked, a bad length) is refused, never guessed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024  # request line and headers; Ollama's clients send a few hundred bytes
READ_SIZE = 64 * 1024
CRLF = b"\r\n"
# Headers about one connection, not the message: never passed on (RFC 9110 §7.6.1), nor the framing headers,
# which each hop sets for itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect"})
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout",
           413: "Request Entity Too Large", 431: "Request Header Fields Too Large", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable"}


class BadMessage(Exception):
    """A message this side cannot frame safely; `status` is the answer to give a client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Head:
    """A request's or a response's start line and headers (names as sent; looked up case-insensitively)."""

    start: tuple[str, str, str]  # (method, target, version) or (version, status, reason)
    headers: tuple[tuple[str, str], ...]
    fields: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)  # lower-case name
    raw: bytes = field(default=b"", compare=False, repr=False)  # as received, when parsed from bytes

    def __post_init__(self) -> None:
        if not self.fields:
            for k, v in self.headers:
                self.fields.setdefault(k.lower(), []).append(v)

    def get(self, name: str) -> str | None:
        values = self.fields.get(name.lower())
        return values[0] if values else None

    @property
    def length(self) -> int | None:
        """Content-Length; None when absent. BadMessage when it cannot be trusted."""
        values = self.fields.get("content-length")
        if not values:
            return None
        if len(set(values)) > 1 or not values[0].strip().isdigit():
            raise BadMessage("invalid Content-Length")
        if self.chunked:
            raise BadMessage("both Content-Length and Transfer-Encoding")
        return int(values[0])

    @property
    def chunked(self) -> bool:
        values = self.fields.get("transfer-encoding")
        if not values:
            return False
        if len(values) > 1 or values[0].strip().lower() != "chunked":
            raise BadMessage(f"Transfer-Encoding {', '.join(values)[:40]!r} not supported", 501)
        return True

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for v in self.fields.get(name, ()) for t in v.split(",")}

    def forwarded(self) -> list[tuple[str, str]]:
        """The end-to-end headers: what the next hop gets."""
        drop = HOP_BY_HOP | self.tokens("connection") if "connection" in self.fields else HOP_BY_HOP
        return [(k, v) for k, v in self.headers if k.lower() not in drop]


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next message head; None when the peer closed before sending a byte of it."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadMessage("connection closed mid-head") from None
    except asyncio.LimitOverrunError:
        raise BadMessage("request head too large", 431) from None
    return parse_head(raw)


def parse_head(raw: bytes | bytearray | memoryview) -> Head:
    """A head from its bytes, up to and including the blank line that ends it."""
    raw = bytes(raw)
    lines = raw.decode("latin-1").split("\r\n")
    while lines and not lines[0]:  # RFC 9112 §2.2: empty lines before a request line are ignored
        lines.pop(0)
    parts = lines[0].split(" ", 2) if lines else []
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise BadMessage("malformed start line")
    headers = []
    fields: dict[str, list[str]] = {}  # built here, in the one pass over the lines, rather than by Head
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or " " in name or "\t" in name:
            raise BadMessage("malformed header line")
        value = value.strip()
        headers.append((name, value))
        if (key := name.lower()) in fields:
            fields[key].append(value)
        else:
            fields[key] = [value]
    return Head((parts[0], parts[1], parts[2]), tuple(headers), fields, raw)


async def _chunk_size(reader: asyncio.StreamReader) -> int:
    return _size(await reader.readuntil(CRLF))


async def _copy_exactly(reader: asyncio.StreamReader, n: int) -> AsyncIterator[bytes]:
    while n > 0:
        data = await reader.read(min(n, READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        yield data


async def body(reader: asyncio.StreamReader, length: int | None, chunked: bool,
               until_eof: bool = False) -> AsyncIterator[bytes]:
    """A message body's bytes, decoded from its framing, as they arrive."""
    if chunked:
        while True:
            n = await _chunk_size(reader)
            if n == 0:
                while (await reader.readuntil(CRLF)) != CRLF:  # trailers: dropped
                    pass
                return
            async for data in _copy_exactly(reader, n):
                yield data
            if await reader.readexactly(2) != CRLF:
                raise BadMessage("chunk not followed by CRLF")
    elif length is not None:
        async for data in _copy_exactly(reader, length):
            yield data
    elif until_eof:
        while data := await reader.read(READ_SIZE):
            yield data


# A chunk-size line as Ollama writes it (hex digits, CRLF), read in one match; any other line takes the general
# path, which reads it the same way when it is valid.
_PLAIN_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})\r\n")


class ChunkScanner:
    """Where a chunked body ends, found in whatever pieces it arrives in: each piece is parsed only for where its
    chunks begin and end, never split or copied apart, so a streamed answer costs one read and one write per
    arrival, however many chunks it holds."""

    MAX_LINE = 4096  # a chunk-size line or a trailer; Ollama's are a few bytes

    def __init__(self) -> None:
        self.need = 0  # bytes left of the current chunk's data and its CRLF
        self.line = b""  # a size line or trailer split across pieces
        self.trailers = False

    def scan(self, data: bytes | bytearray) -> int | None:
        """The offset just past the body's end when it ends in `data`, else None (all of it is body)."""
        i, n = 0, len(data)
        need, line, trailers = self.need, self.line, self.trailers
        try:
            while i < n:
                if need:
                    step = min(need, n - i)
                    i += step
                    need -= step
                    continue
                if not line and not trailers and (plain := _PLAIN_SIZE.match(data, i)) is not None:
                    size = int(plain.group(1), 16)
                    if not size:
                        i, trailers = plain.end(), True
                        continue
                    i = plain.end() + size + 2  # past its data and CRLF, or to the end of what came
                    if i > n:
                        need, i = i - n, n
                    continue
                j = data.find(b"\n", i)
                if j < 0:
                    line += data[i:]
                    if len(line) > self.MAX_LINE:
                        raise BadMessage("chunk-size line too long")
                    return None
                line, i = line + data[i:j + 1], j + 1
                if trailers:
                    if line in (CRLF, b"\n"):
                        return i
                elif (size := _size(line)) == 0:
                    trailers = True
                else:
                    need = size + 2
                line = b""
            return None
        finally:
            self.need, self.line, self.trailers = need, line, trailers


class ChunkedRelay:
    """A chunked body from a stream in its own framing (ChunkScanner), passed on in whatever pieces arrive.

    `extra` says bytes followed the body in the last read (a peer that does not wait for the next request):
    the connection cannot be reused then."""

    def __init__(self, reader: asyncio.StreamReader):
        self.reader = reader
        self.extra = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        scanner = ChunkScanner()
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise asyncio.IncompleteReadError(scanner.line, None)
            end = scanner.scan(data)
            if end is not None:
                self.extra = end < len(data)
                yield data[:end]
                return
            yield data


def _size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip() if b";" in line else line.strip()
    if not size.isalnum() or size[:2] in (b"0x", b"0X"):  # 1*HEXDIG only: no sign, prefix, "_" or space
        raise BadMessage("invalid chunk size")
    try:
        return int(size, 16)
    except ValueError:
        raise BadMessage("invalid chunk size") from None


def encode_head(start: str, headers: list[tuple[str, str]]) -> bytes:
    return (start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


def chunk(data: bytes | bytearray | memoryview) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), bytes(data))
