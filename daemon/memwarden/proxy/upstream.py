"""The connections to Ollama: raw keep-alive TCP streams, kept in a small pool between requests.

Connecting costs a handshake per request, and an HTTP client library costs more than the bytes it moves (an
aiohttp hop measured 0.7-1.6 ms here); a request takes a pooled connection, and gives it back once its answer
has been read to the end with the connection still open. A connection idle for IDLE_S is closed: Go's
net/http server closes idle ones itself, and a request on a connection it just closed would fail.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from memwarden.proxy.http import MAX_HEAD

MAX_IDLE = 32  # connections kept between requests (more concurrent requests open more, closed after)
IDLE_S = 30.0
CONNECT_TIMEOUT_S = 10.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pooled: bool = False):
        self.reader = reader
        self.writer = writer
        self.pooled = pooled  # taken from the pool: it may have been closed by the other side meanwhile
        self.idle_since = 0.0

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Upstream:
    def __init__(self, url: str, max_idle: int = MAX_IDLE, idle_s: float = IDLE_S):
        parts = urlsplit(url)
        self.ssl = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.ssl else 80)
        self.authority = parts.netloc
        self.max_idle = max_idle
        self.idle_s = idle_s
        self.idle: list[Connection] = []
        self.opened = 0

    def take(self) -> Connection | None:
        """The most recently used idle connection still open, if any."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.usable() and now - conn.idle_since < self.idle_s:
                conn.pooled = True
                return conn
            conn.close()
        return None

    async def connect(self) -> Connection:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl or None,
                                                           limit=MAX_HEAD)
        self.opened += 1
        return Connection(reader, writer)

    def give(self, conn: Connection) -> None:
        if not conn.usable() or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
