"""The pool both kinds of connection to Ollama are kept in: its bookkeeping, with connections that only say whether
they are open, then what each kind says over a loopback upstream."""

from __future__ import annotations

import asyncio

import pytest

from memwarden.proxy import upstream
from memwarden.proxy.forward import Connection, Outcome, forward
from memwarden.proxy.hop import UpstreamConnection
from memwarden.proxy.upstream import Origin, Pool

from .test_forward import Sink, Upstream1, streams
from .test_hop import GENERATE, Client, exchange, pool_for


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pooled = False
        self.idle_since = 0.0
        self.open = True

    def usable(self) -> bool:
        return self.open

    def close(self) -> None:
        self.open = False


async def opener(origin: Origin) -> Conn:
    return Conn(f"{origin.host}:{origin.port}")


def pool(**limits: float) -> Pool[Conn]:
    return Pool(Origin.of("http://127.0.0.1:11434"), opener, **limits)  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "origin"), [
    ("http://127.0.0.1:11434", Origin("127.0.0.1", 11434, False, "127.0.0.1:11434")),
    ("https://ollama.example", Origin("ollama.example", 443, True, "ollama.example")),
    ("http://[::1]", Origin("::1", 80, False, "[::1]")),
])
def test_the_origin_is_read_from_ollamas_url(url, origin):
    assert Origin.of(url) == origin


async def test_a_connection_given_back_is_taken_again_most_recently_used_first_and_marked_pooled():
    p = pool()
    a, b = await p.connect(), await p.connect()
    assert p.opened == 2 and not a.pooled
    p.give(a)
    p.give(b)
    assert p.take() is b and b.pooled
    assert p.take() is a
    assert p.take() is None


async def test_connections_closed_meanwhile_or_idle_too_long_are_closed_on_the_way_to_one_still_good():
    p = pool()
    good, gone = Conn("good"), Conn("gone")
    p.give(good)
    p.give(gone)
    gone.open = False  # Ollama closed it while it was idle
    assert p.take() is good and not p.idle

    stale = pool(idle_s=0.0)  # any time idle is too long
    kept = Conn("kept")
    stale.give(kept)
    assert stale.take() is None and not kept.open and not stale.idle


def test_no_more_than_max_idle_are_kept_and_one_that_cannot_carry_another_request_is_closed():
    p = pool(max_idle=2)
    conns = [Conn(str(i)) for i in range(3)]
    for conn in conns:
        p.give(conn)
    assert p.idle == conns[:2] and not conns[2].open
    closed = Conn("closed")
    closed.open = False
    p.give(closed)
    assert closed not in p.idle
    p.close()
    assert not p.idle and not any(conn.open for conn in conns)


async def test_a_connection_that_does_not_open_in_time_is_a_timeout_and_is_not_counted(monkeypatch):
    never = asyncio.Event()

    async def hanging(origin: Origin) -> Conn:
        await never.wait()
        return Conn("late")

    monkeypatch.setattr(upstream, "CONNECT_TIMEOUT_S", 0.01)
    p: Pool[Conn] = Pool(Origin.of("http://127.0.0.1:1"), hanging)
    with pytest.raises(TimeoutError):
        await p.connect()
    assert p.opened == 0


STALE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"


def answering_with_more(answer: bytes):
    """An upstream that sends an answer no request asked for right behind each answer, in the same write."""

    async def answer_and_more(head, body, writer):
        writer.write(answer + STALE)

    return answer_and_more


async def by_hop(pool: Pool[UpstreamConnection]) -> bytes:
    client = Client()
    _, result = exchange(pool, client, GENERATE)
    assert isinstance(await asyncio.wait_for(result, 5), Outcome)
    return bytes(client.transport.data)


async def by_streams(pool: Pool[Connection]) -> bytes:
    sink = Sink()
    await asyncio.wait_for(forward(pool, "GET", "/api/tags", [], None, None, sink, True, True), 5)  # type: ignore[arg-type]
    return bytes(sink.data)


KINDS = {"hop": (pool_for, by_hop), "streams": (streams, by_streams)}


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
                         ids=["content-length", "chunked"])
@pytest.mark.parametrize("kind", KINDS)
async def test_neither_kind_of_connection_carries_a_request_after_bytes_no_request_asked_for(kind, answer):
    pooled, send = KINDS[kind]
    async with Upstream1(answering_with_more(answer)) as up:
        pool = pooled(up.url)
        for _ in range(2):
            got = await send(pool)
            assert b"ok" in got and b"stale" not in got
        assert up.connections == 2, "the second request went on a new connection"
        pool.close()
