"""A client's connection to the proxy: the hit path on callbacks, every other request on the proxy's coroutines,
and back, over real loopback sockets with an upstream played by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import types
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from memwarden.config.schema import ProxyConfig
from memwarden.proxy import http
from memwarden.proxy.client import ClientConnection, request_bytes
from memwarden.proxy.hop import UpstreamConnection
from memwarden.proxy.server import OllamaProxy

from .test_forward import Upstream1

BODY = json.dumps({"model": "m:1b", "prompt": "Why?", "stream": False}).encode()
REQUEST = b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Arbiter:
    """Every model resident; what the proxy tells it, recorded."""

    serving_busy_until = 0.0
    config = types.SimpleNamespace(ollama=types.SimpleNamespace(num_parallel=4, max_queue=512))

    def __init__(self) -> None:
        self.used: list[str] = []
        self.marked: list[str] = []

    def resident(self, model: str) -> bool:
        return True

    def loads_freely(self, model: str) -> bool:
        return False

    def note_use(self, model: str, keep_alive: str | None) -> None:
        self.used.append(model)

    def mark_resident(self, model: str) -> None:
        self.marked.append(model)


async def ok(head, body, writer) -> None:
    answer = b'{"n": %d}' % len(body)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" %
                 (len(answer), answer))
    await writer.drain()


@contextlib.asynccontextmanager
async def proxy_before(url: str, arbiter: Arbiter | None = None) -> AsyncIterator[tuple[OllamaProxy, int]]:
    proxy = OllamaProxy(arbiter or Arbiter(), replace(ProxyConfig(), listen="127.0.0.1:0"), url)  # type: ignore[arg-type]
    await proxy.start()
    assert proxy.server is not None
    try:
        yield proxy, proxy.server.sockets[0].getsockname()[1]
    finally:
        await proxy.close()


class Targets(list):
    """The targets of the requests left to the proxy's coroutines (a task each); `began` set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.began = asyncio.Event()


@pytest.fixture
def coroutine_requests(monkeypatch) -> Targets:
    seen = Targets()
    handled = ClientConnection._handled

    async def counted(self, head):
        seen.append(head.start[1])
        seen.began.set()
        await handled(self, head)

    monkeypatch.setattr(ClientConnection, "_handled", counted)
    return seen


async def answers(reader: asyncio.StreamReader, n: int) -> list[tuple[http.Head, bytes]]:
    got = []
    for _ in range(n):
        head = await asyncio.wait_for(http.read_head(reader), 10)
        assert head is not None
        got.append((head, await reader.readexactly(head.length or 0)))
    return got


async def test_requests_for_a_resident_model_take_the_hit_path_one_after_another_on_a_connection(
        coroutine_requests):
    arbiter = Arbiter()
    async with Upstream1(ok) as up, proxy_before(up.url, arbiter) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST + REQUEST.replace(b"/api/generate", b"/api/chat"))  # pipelined: one write
        got = await answers(reader, 2)
        assert [h.start[1] for h, _ in got] == ["200", "200"] and got[0][1] == b'{"n": %d}' % len(BODY)
        assert [h.start[0] for h in up.heads] == ["POST", "POST"] and [h.start[1] for h in up.heads] == \
            ["/api/generate", "/api/chat"], "in their order"
        assert up.bodies == [BODY, BODY] and up.heads[0].get("host") == up.url.removeprefix("http://")
        assert coroutine_requests == [], "no task for either"
        assert arbiter.used == ["m:1b", "m:1b"] and arbiter.marked == ["m:1b", "m:1b"]
        assert proxy.queue.in_flight == {} and proxy.budget.used == 0 and proxy.requests == 2
        writer.close()


async def test_a_request_whose_body_comes_after_its_head_is_left_to_the_coroutines_and_the_next_is_a_hit(
        coroutine_requests):
    async with Upstream1(ok) as up, proxy_before(up.url) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, _, body = REQUEST.partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(coroutine_requests.began.wait(), 10)  # the head alone: the coroutines await the body
        writer.write(body)
        writer.write(b"GET /api/tags HTTP/1.1\r\n\r\n")
        got = await answers(reader, 2)
        assert [h.start[1] for h, _ in got] == ["200", "200"] and up.bodies == [BODY, b""]
        assert coroutine_requests == ["/api/generate"], "only the first left the hit path"
        assert proxy.queue.in_flight == {} and proxy.budget.used == 0
        writer.close()


async def test_ollama_unreachable_on_the_hit_path_is_a_502_in_ollamas_shape_and_the_connection_closes():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        async with proxy_before(f"http://127.0.0.1:{s.getsockname()[1]}") as (proxy, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            (head, body), = await answers(reader, 1)
            assert head.start[1] == "502" and "unreachable" in json.loads(body)["error"]
            assert await asyncio.wait_for(reader.read(), 10) == b"", "closed"
            assert proxy.queue.in_flight == {}
            writer.close()


@pytest.mark.parametrize(("sent", "status"), [(b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000, "431"),
                                              (b"GET /\r\n\r\n", "400"),
                                              (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "400")])
async def test_a_head_that_cannot_be_read_is_refused_and_the_connection_closed(sent, status):
    async with proxy_before("http://127.0.0.1:9") as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        (head, body), = await answers(reader, 1)
        assert head.start[1] == status and json.loads(body)["error"].startswith("memwarden proxy: ")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_a_client_that_does_not_read_stops_the_proxy_reading_ollama_and_loses_nothing(monkeypatch):
    size = 32 * 1024 * 1024
    paused = asyncio.Event()
    pause_writing = ClientConnection.pause_writing

    def noted(self):
        pause_writing(self)
        paused.set()

    monkeypatch.setattr(ClientConnection, "pause_writing", noted)

    async def big(head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    async with Upstream1(big) as up, proxy_before(up.url) as (proxy, port):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        sock.sendall(REQUEST)
        await asyncio.wait_for(paused.wait(), 30)
        (conn,) = proxy.connections
        assert conn.exchange is not None and conn.exchange.conn is not None
        upstream = conn.exchange.conn.transport
        assert upstream is not None and not upstream.is_reading(), "Ollama's bytes wait in the kernel"
        assert conn.transport.get_write_buffer_size() <= 1024 * 1024, "not in the proxy's memory"
        loop = asyncio.get_running_loop()
        received = 0
        while data := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 30):
            received += len(data)
            if received >= size:
                break
        sock.close()
        head_bytes = received - size
        assert 0 < head_bytes < 200, "every byte of the answer came through"


async def test_a_request_refused_for_want_of_body_budget_counts_no_use_of_its_model():
    arbiter = Arbiter()
    async with Upstream1(ok) as up, proxy_before(up.url, arbiter) as (proxy, port):
        proxy.budget.used = proxy.budget.limit  # every capped body the proxy may hold is held
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        (head, body), = await answers(reader, 1)
        assert head.start[1] == "503" and "busy" in json.loads(body)["error"]
        assert arbiter.used == [] and up.heads == [] and proxy.queue.in_flight == {}
        writer.close()


async def test_a_body_sent_in_its_own_write_right_behind_its_head_still_takes_the_hit_path(coroutine_requests):
    """As http.client sends a request: the head in one write, the body in the next."""
    async with Upstream1(ok) as up, proxy_before(up.url) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, _, body = REQUEST.partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")
        await writer.drain()
        while not proxy.connections or next(iter(proxy.connections))._pending is None:
            await asyncio.sleep(0)  # until the proxy has read the head alone
        writer.write(body)
        (answer, _), = await answers(reader, 1)
        assert answer.start[1] == "200" and up.bodies == [BODY]
        assert coroutine_requests == [], "no task for it"
        writer.close()


class Written(asyncio.Transport):
    """A transport that keeps what is written, in place of a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Recency(Arbiter):
    """Two resident models, least recently used first; each use noted with whether the request had gone up."""

    def __init__(self, upstream: Written) -> None:
        super().__init__()
        self.order = ["m:1b", "other:1b"]
        self.upstream = upstream
        self.sent_before_use: list[bool] = []

    def note_use(self, model: str, keep_alive: str | None) -> None:
        super().note_use(model, keep_alive)
        self.sent_before_use.append(bytes(self.upstream.data).startswith(b"POST /api/generate "))
        self.order.remove(model)
        self.order.append(model)


async def test_a_hits_use_is_noted_once_its_request_is_on_its_way_and_before_any_other_callback_plans_an_eviction():
    upstream_transport = Written()
    arbiter = Recency(upstream_transport)
    proxy = OllamaProxy(arbiter, ProxyConfig(), "http://127.0.0.1:1")  # type: ignore[arg-type]
    client = ClientConnection(proxy, 300.0)
    client.connection_made(Written())
    upstream = UpstreamConnection()
    upstream.connection_made(upstream_transport)
    proxy.pool.give(upstream)
    victims: list[str] = []
    # An eviction planned by a callback already waiting on the loop when the request arrives: it takes the least
    # recently used model, and must see the use of the model whose request was just sent.
    asyncio.get_running_loop().call_soon(lambda: victims.append(arbiter.order[0]))
    client.data_received(REQUEST)
    assert arbiter.sent_before_use == [True], "the use is noted after the request's write, in the same callback"
    assert proxy.requests == 1 and proxy.queue.in_flight == {"m:1b": 1}
    await asyncio.sleep(0)
    assert victims == ["other:1b"], "the model whose request is on its way is not the one evicted"
    client.connection_lost(None)


@pytest.mark.parametrize("extra", [b"", b"Connection: keep-alive\r\n", b"Host: y\r\n"],
                         ids=["as curl sends it", "with a hop-by-hop header", "two hosts"])
def test_a_request_goes_to_ollama_as_sent_but_for_its_host_and_what_this_hop_must_not_pass_on(extra):
    sent = REQUEST.replace(b"Host: x\r\n", b"Host: x\r\nAccept: */*\r\n" + extra)
    head_bytes, _, body = sent.partition(b"\r\n\r\n")
    head = http.parse_head(head_bytes + b"\r\n\r\n")
    out = request_bytes(head, "127.0.0.1:11434", body)
    out_head = http.parse_head(out.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
    assert out.endswith(b"\r\n\r\n" + body) and out_head.start == ("POST", "/api/generate", "HTTP/1.1")
    assert out_head.fields["host"] == ["127.0.0.1:11434"] and out_head.fields["content-length"] == [str(len(body))]
    assert out_head.get("accept") == "*/*" and "connection" not in out_head.fields
    if not extra:
        assert out == sent.replace(b"Host: x", b"Host: 127.0.0.1:11434"), "passed on as it came, its Host changed"
