"""The thin hop: one request up a pooled connection, its answer written to the client's transport by callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from memwarden.proxy import http
from memwarden.proxy.forward import TAIL_BYTES, ClientGone, Outcome, UpstreamFailed, reported_load_ns
from memwarden.proxy.hop import Exchange, UpstreamConnection
from memwarden.proxy.upstream import Origin, Pool

from .test_forward import Upstream1


class ClientTransport:
    """What the hop writes to: a client connection's transport."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes: list[bytes] = []
        self.wrote = asyncio.Event()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes.append(bytes(data))
        self.wrote.set()

    def is_closing(self) -> bool:
        return self.closing


class Client:
    def __init__(self) -> None:
        self.transport = ClientTransport()
        self.paused = False


def pool_for(url: str) -> Pool[UpstreamConnection]:
    return Pool(Origin.of(url), UpstreamConnection.open)


Result = asyncio.Future[Outcome | UpstreamFailed | ClientGone]


def exchange(pool: Pool[UpstreamConnection], client: Client, request: bytes, method: str = "POST",
             keep_alive: bool = True, want_tail: bool = False) -> tuple[Exchange, Result]:
    result: Result = asyncio.get_running_loop().create_future()
    ex = Exchange(pool, client, method, request, keep_alive, result.set_result, want_tail=want_tail)  # type: ignore[arg-type]
    ex.start()
    return ex, result


GENERATE = b'POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"model":"m"}'


async def test_a_chunked_answer_reaches_the_client_as_it_comes_and_its_connection_goes_back_to_the_pool():
    second = asyncio.Event()

    async def answer(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"6\r\n{\"a\"}\n\r\n")
        await writer.drain()
        await second.wait()
        writer.write(b"6\r\n{\"b\"}\n\r\n0\r\n\r\n")
        await writer.drain()

    async with Upstream1(answer) as up:
        pool, client = pool_for(up.url), Client()
        _, result = exchange(pool, client, GENERATE)
        sent = client.transport
        while b'{"a"}' not in sent.data:  # the first line is out while Ollama still holds the second
            sent.wrote.clear()
            await asyncio.wait_for(sent.wrote.wait(), 5)
        assert not result.done() and b'{"b"}' not in sent.data
        assert sent.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and sent.writes[0].endswith(b"6\r\n{\"a\"}\n\r\n"), \
            "the head leaves with the first chunk, in one write"
        second.set()
        outcome = await asyncio.wait_for(result, 5)
        assert isinstance(outcome, Outcome) and outcome.status == 200 and outcome.keep_alive
        head, _, rest = bytes(sent.data).partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head and b"Content-Type: application/x-ndjson" in head
        assert rest == b"6\r\n{\"a\"}\n\r\n6\r\n{\"b\"}\n\r\n0\r\n\r\n", "Ollama's own chunks, byte for byte"
        assert up.bodies == [b'{"model":"m"}'] and len(pool.idle) == 1

        _, again = exchange(pool, Client(), GENERATE)
        second.set()
        assert isinstance(await asyncio.wait_for(again, 5), Outcome)
        assert up.connections == 1 and pool.opened == 1, "the second request reused the first one's connection"
        pool.close()


async def test_a_pooled_connection_ollama_closes_before_answering_is_retried_once_on_a_new_one():
    async def answer(head, body, writer):
        if head.get("x-close") == "1" and up.connections == 1:
            writer.close()  # as if Ollama had closed it, idle, just as the request went
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with Upstream1(answer) as up:
        pool = pool_for(up.url)
        for close in ("0", "1"):
            client = Client()
            _, result = exchange(pool, client, b"GET /api/tags HTTP/1.1\r\nX-Close: %s\r\n\r\n" % close.encode(),
                                 "GET")
            outcome = await asyncio.wait_for(result, 5)
            assert isinstance(outcome, Outcome) and outcome.status == 200
            assert bytes(client.transport.data).endswith(b"\r\n\r\nok")
        assert up.connections == 2 and pool.opened == 2, "retried once, on a new connection"
        pool.close()


async def test_ollama_unreachable_is_upstream_failed_with_nothing_sent():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        client = Client()
        _, result = exchange(pool_for(f"http://127.0.0.1:{port}"), client, GENERATE)
        assert isinstance(await asyncio.wait_for(result, 5), UpstreamFailed) and not client.transport.data


async def test_an_answer_broken_between_its_head_and_its_body_is_upstream_failed_with_nothing_sent():
    async def head_then_hang_up(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        writer.close()

    async with Upstream1(head_then_hang_up) as up:
        client = Client()
        _, result = exchange(pool_for(up.url), client, GENERATE)
        assert isinstance(await asyncio.wait_for(result, 5), UpstreamFailed) and client.transport.data == b""


async def test_an_answer_broken_midway_cuts_the_client_connection():
    async def half(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        writer.close()

    async with Upstream1(half) as up:
        client = Client()
        _, result = exchange(pool_for(up.url), client, GENERATE)
        outcome = await asyncio.wait_for(result, 5)
        assert isinstance(outcome, Outcome) and outcome.status == 200 and not outcome.keep_alive
        assert bytes(client.transport.data).endswith(b"\r\n\r\nhalf")


async def test_an_answer_that_ends_with_its_connection_is_passed_on_and_closes_the_clients():
    async def until_close(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with Upstream1(until_close) as up:
        client = Client()
        _, result = exchange(pool_for(up.url), client, GENERATE)
        outcome = await asyncio.wait_for(result, 5)
        assert isinstance(outcome, Outcome) and not outcome.keep_alive
        head, _, rest = bytes(client.transport.data).partition(b"\r\n\r\n")
        assert b"Connection: close" in head and rest == b"all of it"


async def test_a_head_answer_and_an_interim_100_are_framed_as_ollama_meant_them():
    async def answer(head, body, writer):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        await writer.drain()

    async with Upstream1(answer) as up:
        client = Client()
        _, result = exchange(pool_for(up.url), client, b"HEAD /api/tags HTTP/1.1\r\n\r\n", "HEAD")
        outcome = await asyncio.wait_for(result, 5)
        assert isinstance(outcome, Outcome) and outcome.status == 200 and outcome.keep_alive
        assert bytes(client.transport.data) == b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"


async def test_a_streamed_answers_tail_holds_its_final_object():
    lines = [b'{"response":"%s","done":false}\n' % (b"w" * 200) for _ in range(50)]
    lines.append(b'{"done":true,"context":[' + b"7," * 600 + b'7],"load_duration":250000000,"eval_count":50}\n')

    async def answer(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for line in lines:
            writer.write(http.chunk(line))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with Upstream1(answer) as up:
        _, result = exchange(pool_for(up.url), Client(), GENERATE, want_tail=True)
        outcome = await asyncio.wait_for(result, 5)
    assert isinstance(outcome, Outcome) and len(outcome.tail) <= TAIL_BYTES
    assert reported_load_ns(outcome.tail) == 250_000_000


async def test_while_the_client_is_over_its_high_water_mark_ollamas_connection_is_not_read():
    sent_all = asyncio.Event()
    size = 8 * 1024 * 1024

    up_got_it = asyncio.Event()

    async def big(head, body, writer):
        up_got_it.set()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        sent_all.set()

    async with Upstream1(big) as up:
        pool = pool_for(up.url)
        pool.give(await pool.connect())  # so that the request goes on a pooled connection at once
        client = Client()
        client.paused = True  # a client that does not read: its transport says so before the answer begins
        ex, result = exchange(pool, client, GENERATE)
        assert ex.conn is not None
        await asyncio.wait_for(up_got_it.wait(), 5)
        assert ex.conn.transport is not None and not ex.conn.transport.is_reading(), "Ollama's bytes wait in the kernel"
        assert not client.transport.data and not sent_all.is_set()
        client.paused = False
        ex.resume()
        outcome = await asyncio.wait_for(result, 30)
        assert isinstance(outcome, Outcome) and sent_all.is_set()
        assert len(client.transport.data) > size


async def test_a_connection_whose_reading_a_slow_client_paused_reads_again_for_the_next_request():
    async with Upstream1(ok_answer) as up:
        pool = pool_for(up.url)
        slow = Client()
        ex, result = exchange(pool, slow, GENERATE)
        write = slow.transport.write

        def over_the_high_water_mark(data: bytes) -> None:  # what the client's protocol does on pause_writing
            write(data)
            slow.paused = True
            ex.pause()

        slow.transport.write = over_the_high_water_mark  # type: ignore[method-assign]
        assert isinstance(await asyncio.wait_for(result, 5), Outcome) and len(pool.idle) == 1
        _, again = exchange(pool, Client(), GENERATE)
        assert isinstance(await asyncio.wait_for(again, 5), Outcome), "the pooled connection is read again"
        assert pool.opened == 1
        pool.close()


async def ok_answer(head, body, writer):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


@pytest.mark.parametrize("rest", [b"2\r\nok\r\n0\r\n\r\n", b""], ids=["whole", "broken after its head"])
async def test_what_the_answers_head_tells_is_told_once_after_its_first_bytes_left_for_the_client(rest):
    async def answer(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + rest)
        await writer.drain()
        writer.close()

    async with Upstream1(answer) as up:
        client = Client()
        told: list[tuple[int, bytes]] = []
        result: Result = asyncio.get_running_loop().create_future()
        Exchange(pool_for(up.url), client, "POST", GENERATE, True, result.set_result,  # type: ignore[arg-type]
                 lambda status: told.append((status, bytes(client.transport.data)))).start()
        await asyncio.wait_for(result, 5)
        assert told == [(200, bytes(client.transport.data))], \
            "told once, with the answer's bytes already written (none, when it broke before any)"
        assert rest == b"" or client.transport.data.endswith(rest)
