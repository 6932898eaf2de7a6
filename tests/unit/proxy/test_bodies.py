import asyncio

import pytest

from memwarden.proxy.bodies import BodyBudget, HeldBody, Refusal, read_capped, read_small

KiB = 1024


class Content:
    """An aiohttp StreamReader's iter_any(): the chunks given, then (optionally) hang or fail."""

    def __init__(self, *chunks: bytes, then: str = "end"):
        self.chunks = chunks
        self.then = then
        self.read = 0

    async def iter_any(self):
        for chunk in self.chunks:
            self.read += len(chunk)
            yield chunk
        if self.then == "hang":
            await asyncio.Event().wait()
        if self.then == "reset":
            raise ConnectionResetError("Connection lost")


class Unread:
    async def iter_any(self):
        raise AssertionError("a body announced over the cap must not be read")
        yield b""  # pragma: no cover


async def test_a_body_announced_over_the_cap_is_refused_413_unread():
    refusal = await read_capped(Unread(), 10 * KiB + 1, 10 * KiB, BodyBudget(100 * KiB))
    assert refusal == Refusal(413, "memwarden proxy: request body of 10.0 KiB is over the 10.0 KiB limit "
                                   "(proxy.max_request_body)")


async def test_a_body_that_grows_over_the_cap_is_refused_at_the_cap_and_its_bytes_given_back():
    budget = BodyBudget(100 * KiB)
    content = Content(*[b"x" * KiB] * 50)
    refusal = await read_capped(content, None, 10 * KiB, budget)
    assert isinstance(refusal, Refusal) and refusal.status == 413
    assert content.read == 11 * KiB, "reading stops at the first chunk over the cap"
    assert budget.used == 0 and budget.peak == 10 * KiB


async def test_a_body_under_the_cap_is_held_until_sent_then_let_go():
    budget = BodyBudget(100 * KiB)
    held = await read_capped(Content(b'{"model":', b' "m"}'), None, 10 * KiB, budget)
    assert isinstance(held, HeldBody) and bytes(held.raw) == b'{"model": "m"}' and held.size == 14
    assert budget.used == 14
    sent = [bytes(chunk) async for chunk in held.stream()]
    assert sent == [b'{"model": "m"}'] and held.raw is None and budget.used == 0
    held.release()  # and once more, from the handler's finally: nothing is given back twice
    assert budget.used == 0


async def test_bodies_held_together_stay_within_the_budget_else_503_with_retry_after():
    budget = BodyBudget(15 * KiB)
    first = await read_capped(Content(b"a" * 10 * KiB), None, 10 * KiB, budget)
    assert isinstance(first, HeldBody)
    second = await read_capped(Content(b"b" * 4 * KiB, b"b" * 4 * KiB), None, 10 * KiB, budget)
    assert isinstance(second, Refusal) and second.status == 503 and second.retry_after == 1
    assert budget.used == 10 * KiB, "the refused body gave back what it held"
    first.release()
    assert isinstance(await read_capped(Content(b"c" * 8 * KiB), None, 10 * KiB, budget), HeldBody)


async def test_a_body_that_never_completes_is_refused_408_at_the_deadline():
    budget = BodyBudget(100 * KiB)
    refusal = await read_capped(Content(b"x" * KiB, then="hang"), None, 10 * KiB, budget, deadline_s=0.05)
    assert isinstance(refusal, Refusal) and refusal.status == 408 and budget.used == 0


async def test_a_client_gone_mid_body_gives_its_bytes_back():
    budget = BodyBudget(100 * KiB)
    with pytest.raises(ConnectionResetError):
        await read_capped(Content(b"x" * KiB, then="reset"), None, 10 * KiB, budget)
    assert budget.used == 0


async def test_a_small_body_of_known_length_is_read_in_one_call_within_the_budget():
    budget = BodyBudget(100)
    r = asyncio.StreamReader()
    r.feed_data(b'{"model": "m"}')
    held = await read_small(r, 14, 10 * KiB, budget)
    assert isinstance(held, HeldBody) and held.raw == b'{"model": "m"}' and budget.used == 14
    held.release()
    assert budget.used == 0
    refused = await read_small(asyncio.StreamReader(), 101, 10 * KiB, budget)
    assert isinstance(refused, Refusal) and refused.status == 503 and budget.used == 0


async def test_a_small_body_that_never_completes_is_408_and_one_cut_short_gives_its_budget_back():
    budget = BodyBudget(100 * KiB)
    r = asyncio.StreamReader()
    r.feed_data(b"x" * 10)
    refusal = await read_small(r, 20, 10 * KiB, budget, deadline_s=0.05)
    assert isinstance(refusal, Refusal) and refusal.status == 408 and budget.used == 0
    r = asyncio.StreamReader()
    r.feed_data(b"x" * 10)
    r.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_small(r, 20, 10 * KiB, budget)
    assert budget.used == 0
