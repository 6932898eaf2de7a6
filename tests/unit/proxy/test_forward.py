"""Forwarding over pooled connections, against a loopback upstream this test plays by hand."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from memwarden.proxy import http
from memwarden.proxy.forward import (
    TAIL_BYTES,
    Connection,
    UpstreamFailed,
    answer_head,
    forward,
    passed_on,
    reported_load_ns,
)
from memwarden.proxy.upstream import Origin, Pool


def streams(url: str) -> Pool[Connection]:
    return Pool(Origin.of(url), Connection.open)


class Sink:
    """A client connection's writer: what the proxy sends back."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes: list[bytes] = []
        self.wrote = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes.append(bytes(data))
        self.wrote.set()

    async def drain(self) -> None:
        pass


class Upstream1:
    """A loopback server answering each request with `answer(request_head, body)`'s bytes."""

    def __init__(self, answer):
        self.answer = answer
        self.heads: list[http.Head] = []
        self.bodies: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Upstream1:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while (head := await http.read_head(reader)) is not None:
                body = b"".join([c async for c in http.body(reader, head.length, head.chunked)])
                self.heads.append(head)
                self.bodies.append(body)
                await self.answer(head, body, writer)
        writer.close()


async def test_a_chunked_answer_reaches_the_client_chunk_by_chunk():
    second = asyncio.Event()

    async def answer(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"6\r\n{\"a\"}\n\r\n")
        await writer.drain()
        await second.wait()
        writer.write(b"6\r\n{\"b\"}\n\r\n0\r\n\r\n")
        await writer.drain()

    async with Upstream1(answer) as up:
        pool, sink, url = streams(up.url), Sink(), up.url
        task = asyncio.create_task(forward(pool, "POST", "/api/generate", [("Content-Type", "application/json")],
                                           b'{"model":"m"}', 13, sink, True, True))
        while b'{"a"}' not in sink.data:  # the first line is out while Ollama still holds the second
            sink.wrote.clear()
            await asyncio.wait_for(sink.wrote.wait(), 5)
        assert b'{"b"}' not in sink.data and not task.done()
        assert sink.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and sink.writes[0].endswith(b"6\r\n{\"a\"}\n\r\n"), \
            "the head leaves with the first chunk that came with it, in one write"
        second.set()
        outcome = await asyncio.wait_for(task, 5)
    assert outcome.status == 200 and outcome.keep_alive
    head, _, rest = bytes(sink.data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
    assert rest == b"6\r\n{\"a\"}\n\r\n6\r\n{\"b\"}\n\r\n0\r\n\r\n", "Ollama's own chunks, byte for byte"
    assert up.heads[0].get("host") == url.removeprefix("http://") and up.bodies == [b'{"model":"m"}']


async def test_the_connection_is_reused_and_a_stale_one_is_retried_on_a_new_one(monkeypatch):
    closed = asyncio.Event()

    async def answer(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if head.get("x-last") == "1":
            writer.close()  # Ollama closes this connection once it sits idle in the pool
            await writer.wait_closed()
            closed.set()

    async with Upstream1(answer) as up:
        pool = streams(up.url)
        for last in ("0", "1"):
            sink = Sink()
            outcome = await forward(pool, "GET", "/api/tags", [("X-Last", last)], None, None, sink, True, True)
            assert outcome.status == 200 and bytes(sink.data).endswith(b"\r\n\r\nok")
        assert up.connections == 1 and pool.opened == 1, "the second request reused the first one's connection"
        await closed.wait()
        # As if the close had not been seen yet when the next request takes the connection from the pool:
        monkeypatch.setattr(Connection, "usable", lambda self: True)
        sink = Sink()
        outcome = await forward(pool, "GET", "/api/tags", [], None, None, sink, True, True)
        assert outcome.status == 200 and bytes(sink.data).endswith(b"\r\n\r\nok")
        assert up.connections == 2 and pool.opened == 2, "retried once, on a new connection"
        pool.close()


async def test_ollama_unreachable_is_upstream_failed_for_the_caller_to_answer_502():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(UpstreamFailed):
            await forward(streams(f"http://127.0.0.1:{port}"), "GET", "/api/tags", [], None, None, Sink(), True,
                          True)


async def test_a_streamed_body_goes_up_chunked_and_an_answer_to_http10_ends_with_the_close():
    async def answer(head, body, writer):
        writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        await writer.drain()

    async def stream():
        for part in (b"one ", b"two"):
            yield part

    async with Upstream1(answer) as up:
        sink = Sink()
        outcome = await forward(streams(up.url), "POST", "/api/blobs/x", [], stream(), None, sink, False, True)
    assert up.heads[0].chunked and up.bodies == [b"one two"]
    assert outcome.status == 201 and not outcome.keep_alive
    head, _, rest = bytes(sink.data).partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head and rest == b"hi"


def test_the_load_duration_is_read_from_the_answers_last_bytes():
    final = b'{"done":true,"context":[1,2,3],"total_duration":900,"load_duration":412000000,"eval_count":3}'
    assert reported_load_ns(final) == 412_000_000
    assert reported_load_ns(b'{"load_duration":5}\n{"load_duration":7}') == 7, "the last object's"
    assert reported_load_ns(b'{"done":true,"load_duration":0}') is None, "0: the model was resident"
    assert reported_load_ns(b'{"done":true,"response":"no durations"}') is None


async def test_a_streamed_answers_tail_holds_its_final_object_however_long_the_answer():
    lines = [b'{"response":"%s","done":false}\n' % (b"w" * 200) for _ in range(50)]
    lines.append(b'{"done":true,"context":[' + b"7," * 600 + b'7],"load_duration":250000000,"eval_count":50}\n')

    async def answer(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for line in lines:
            writer.write(http.chunk(line))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with Upstream1(answer) as up:
        outcome = await asyncio.wait_for(forward(streams(up.url), "POST", "/api/generate", [], b"{}", 2, Sink(),
                                                 True, True), 5)
    assert len(outcome.tail) <= TAIL_BYTES
    assert reported_load_ns(outcome.tail) == 250_000_000


async def test_an_answer_that_breaks_before_any_of_it_is_passed_on_is_upstream_failed():
    """Its head waits for its first piece, so when Ollama breaks off in between the client has been told nothing
    and can be answered 502, not left with a connection cut after a 200."""

    async def head_then_hang_up(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        writer.close()

    async with Upstream1(head_then_hang_up) as up:
        sink = Sink()
        with pytest.raises(UpstreamFailed):
            await forward(streams(up.url), "POST", "/api/generate", [], b"{}", 2, sink, True, True)
        assert sink.data == b""


OLLAMAS_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nDate: Sun, 06 Dec 2026 14:00:00 GMT\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("keep_alive", [True, False])
def test_ollamas_answer_head_is_passed_on_as_it_came_and_says_exactly_what_answer_head_would(keep_alive):
    resp = http.parse_head(OLLAMAS_HEAD)
    passed = passed_on(resp, OLLAMAS_HEAD, keep_alive)
    assert passed is not None and passed.startswith(OLLAMAS_HEAD[:-2])
    assert passed == OLLAMAS_HEAD if keep_alive else passed.endswith(b"\r\nConnection: close\r\n\r\n")
    rebuilt = answer_head(resp, None, True, keep_alive)
    assert http.parse_head(passed).headers == http.parse_head(rebuilt).headers


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
], ids=["connection", "keep-alive", "two lengths", "HTTP/1.0"])
def test_an_answer_head_with_what_this_hop_must_not_pass_on_is_written_anew(head):
    assert passed_on(http.parse_head(head), head, True) is None
