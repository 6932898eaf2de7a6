"""The connections to Ollama kept between requests: one pool for both kinds the proxy speaks HTTP over.

Connecting costs a handshake per request, and an HTTP client library costs more than the bytes it moves (an
aiohttp hop measured 0.7-1.6 ms here), so the proxy keeps raw keep-alive TCP connections: asyncio Protocols for
the thin hop (hop.py), stream pairs for a streamed request body or an HTTP/1.0 client (forward.py). A request
takes the most recently used idle connection still open, and gives it back once its answer has been read to the
end with the connection still open. A connection idle for IDLE_S is closed: Go's net/http server closes idle ones
itself, and a request on a connection it just closed would fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import urlsplit

MAX_IDLE = 32  # connections kept between requests (more concurrent requests open more, closed after)
IDLE_S = 30.0
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Origin:
    """Where Ollama listens, read from its URL once."""

    host: str
    port: int
    ssl: bool
    authority: str  # what a request's Host header says

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        ssl = parts.scheme == "https"
        return cls(parts.hostname or "127.0.0.1", parts.port or (443 if ssl else 80), ssl, parts.netloc)


class Pooled(Protocol):
    """A connection the pool can keep: whether it can carry another request, and how to end it."""

    pooled: bool  # taken from the pool: the other side may have closed it meanwhile
    idle_since: float

    def usable(self) -> bool: ...

    def close(self) -> None: ...


Conn = TypeVar("Conn", bound=Pooled)


class Pool(Generic[Conn]):
    """Idle connections of one kind, most recently used last in `idle`; `opener` makes a new one."""

    def __init__(self, origin: Origin, opener: Callable[[Origin], Awaitable[Conn]], max_idle: int = MAX_IDLE,
                 idle_s: float = IDLE_S):
        self.origin = origin
        self.opener = opener
        self.max_idle = max_idle
        self.idle_s = idle_s
        self.idle: list[Conn] = []
        self.opened = 0

    def take(self) -> Conn | None:
        """The most recently used idle connection still open and not idle too long, if any; the others met on the
        way are closed."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.usable() and now - conn.idle_since < self.idle_s:
                conn.pooled = True
                return conn
            conn.close()
        return None

    async def connect(self) -> Conn:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            conn = await self.opener(self.origin)
        self.opened += 1
        return conn

    def give(self, conn: Conn) -> None:
        """Keep a connection whose answer was read to its end, or close it if it cannot carry another request or
        max_idle are kept already."""
        if not conn.usable() or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
