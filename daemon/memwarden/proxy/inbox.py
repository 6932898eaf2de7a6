"""A client connection's received bytes, read two ways: parsed in place by the connection's protocol on the hit
path, and awaited like an asyncio.StreamReader by the slow path (a body read whole, streamed up, or drained
while lingering), over the same buffer, so a request the slow path has answered hands what follows it back to
the protocol as it is.

The buffer is bounded: past `limit` bytes unread, the transport stops reading until they are taken, unless a
read awaits more (a read's own size bounds it then: readuntil's by `limit`, readexactly's by its caller).
"""

from __future__ import annotations

import asyncio

from memwarden.proxy.http import READ_SIZE


class Inbox:
    def __init__(self, transport: asyncio.Transport, limit: int):
        self.transport = transport
        self.limit = limit
        self.buffer = bytearray()
        self.eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if self._waiter is not None:  # a reader that wants more: it takes what it needs before any pause
            self._wake()
        elif len(self.buffer) > self.limit and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def taken(self, n: int) -> bytes:
        """The first n bytes, removed."""
        data = bytes(self.buffer[:n])
        self.drop(n)
        return data

    def drop(self, n: int) -> None:
        del self.buffer[:n]
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if self._paused and len(self.buffer) <= self.limit // 2:
            self._paused = False
            self.transport.resume_reading()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _more(self) -> None:
        if self.eof:
            raise asyncio.IncompleteReadError(bytes(self.buffer), None)
        if self._paused:  # a read waits on bytes beyond the limit (a body of up to SMALL_BODY, read whole)
            self._paused = False
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def at_eof(self) -> bool:
        return self.eof and not self.buffer

    async def read(self, n: int = READ_SIZE) -> bytes:
        """Up to n bytes as soon as any are here; b"" at the end."""
        while not self.buffer:
            if self.eof:
                return b""
            await self._more()
        return self.taken(n)

    async def readexactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._more()
        return self.taken(n)

    async def readuntil(self, separator: bytes) -> bytes:
        """Up to and including `separator`; LimitOverrunError when it is not within `limit` bytes."""
        start = 0
        while (i := self.buffer.find(separator, start)) < 0:
            if len(self.buffer) > self.limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", len(self.buffer))
            start = max(0, len(self.buffer) - len(separator) + 1)
            await self._more()
        return self.taken(i + len(separator))
