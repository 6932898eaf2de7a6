"""The pool both kinds of connection to Ollama are kept in, with connections that only say whether they are open."""

from __future__ import annotations

import asyncio

import pytest

from memwarden.proxy import upstream
from memwarden.proxy.upstream import Origin, Pool


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
