"""A client connection's received bytes: bounded, and readable like a StreamReader by the proxy's coroutines."""

from __future__ import annotations

import asyncio

import pytest

from memwarden.proxy.inbox import Inbox


class Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def test_bytes_past_the_limit_stop_the_transport_reading_until_they_are_taken():
    transport = Transport()
    inbox = Inbox(transport, 100)  # type: ignore[arg-type]
    inbox.feed(b"x" * 100)
    assert transport.reading
    inbox.feed(b"x")
    assert not transport.reading
    inbox.drop(40)
    assert not transport.reading, "61 left: still over half the limit"
    assert inbox.taken(20) == b"x" * 20 and transport.reading


async def test_a_read_of_more_than_the_limit_keeps_the_transport_reading_until_it_has_them():
    transport = Transport()
    inbox = Inbox(transport, 100)  # type: ignore[arg-type]
    read = asyncio.ensure_future(inbox.readexactly(250))
    await asyncio.sleep(0)  # the read begins, and waits
    inbox.feed(b"a" * 150)  # over the limit, with a reader waiting: no pause
    assert transport.reading
    await asyncio.sleep(0)  # the read looks, and waits for more
    inbox.feed(b"b" * 150)
    assert await asyncio.wait_for(read, 5) == b"a" * 150 + b"b" * 100
    assert inbox.buffer == b"b" * 50 and transport.reading


async def test_the_end_and_the_limit_read_as_a_stream_readers_do():
    inbox = Inbox(Transport(), 10)  # type: ignore[arg-type]
    inbox.feed(b"0123456789abc")
    with pytest.raises(asyncio.LimitOverrunError):
        await inbox.readuntil(b"\r\n")
    assert await inbox.read(4) == b"0123"
    inbox.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await inbox.readexactly(20)
    assert await inbox.read() == b"456789abc" and await inbox.read() == b"" and inbox.at_eof()
