"""The control server's connections, in process: hang-ups cancel waits, half-closes get their answers, idle and
trickling clients are closed, a client that does not read is not served further, max_clients holds."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from memwarden.control import connection
from memwarden.control.admission import ClientLimits
from memwarden.control.protocol import BUSY, LINE_TOO_LONG, request_line
from memwarden.control.registry import Registry
from memwarden.control.server import ControlServer, bind_unix

BIG = 2 * 1024 * 1024


class World:
    def __init__(self, server: ControlServer, path: Path):
        self.server = server
        self.path = path
        self.cancelled: list[str] = []
        self.done: list[str] = []
        self.big_calls = 0
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(str(self.path), limit=4 * BIG)


async def eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def send(writer: asyncio.StreamWriter, method: str, req_id: int = 1) -> None:
    writer.write(request_line(method, None, req_id))
    await writer.drain()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    tmp = Path(tempfile.mkdtemp(prefix="mwconn", dir="/tmp"))
    registry = Registry()
    server = ControlServer(registry, limits=ClientLimits(max_clients=8, per_user=8, reserved=2,
                                                         idle_timeout=30.0, read_timeout=30.0))
    w = World(server, tmp / "control.sock")

    async def ping() -> str:
        return "pong"

    async def wait() -> None:
        w.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            w.cancelled.append("wait")
            raise

    async def change() -> str:
        w.waiting.set()
        await w.gate.wait()
        w.done.append("change")
        return "changed"

    async def big() -> str:
        w.big_calls += 1
        return "x" * BIG

    registry.add("ping", ping)
    registry.add("wait", wait)
    registry.add("change", change, admin=True)
    registry.add("big", big)
    await server.start(bind_unix(w.path), w.path)
    yield w
    await server.close()
    shutil.rmtree(tmp, ignore_errors=True)


async def test_a_hang_up_cancels_a_waiting_read_method_and_frees_its_slot(world):
    _reader, writer = await world.connect()
    await send(writer, "wait")
    await world.waiting.wait()
    assert world.server.clients == 1
    writer.close()
    await eventually(lambda: world.cancelled == ["wait"] and world.server.clients == 0)


async def test_a_half_close_still_gets_every_answer(world):
    reader, writer = await world.connect()
    writer.write(request_line("ping", None, 1) + request_line("ping", None, 2))
    writer.write_eof()
    replies = [json.loads(line) for line in (await reader.read()).splitlines()]
    assert [(r["id"], r["result"]) for r in replies] == [(1, "pong"), (2, "pong")]
    writer.close()


async def test_a_hang_up_after_a_half_close_is_still_noticed(world):
    """After shutdown(SHUT_WR) the socket has nothing more to read: the hang-up is polled for."""
    _reader, writer = await world.connect()
    await send(writer, "wait")
    writer.write_eof()
    await world.waiting.wait()
    writer.close()
    await eventually(lambda: world.cancelled == ["wait"] and world.server.clients == 0)


async def test_a_state_changing_method_runs_to_its_end_though_its_client_hung_up(world):
    _reader, writer = await world.connect()
    await send(writer, "change")
    await world.waiting.wait()
    writer.close()
    await eventually(lambda: world.server.clients == 1 and not world.cancelled)
    world.gate.set()
    await eventually(lambda: world.done == ["change"] and world.server.clients == 0)


async def test_an_idle_connection_is_closed(world):
    world.server.limits = ClientLimits(idle_timeout=0.2)
    reader, writer = await world.connect()
    await send(writer, "ping")
    assert json.loads(await reader.readline())["result"] == "pong"
    assert await reader.read() == b""  # closed by the daemon, without a word
    await eventually(lambda: world.server.clients == 0)


async def test_a_line_trickling_in_is_refused_once_its_time_is_up(world):
    world.server.limits = ClientLimits(read_timeout=0.2)
    reader, writer = await world.connect()
    writer.write(b'{"jsonrpc":"2.0",')
    reply = json.loads(await reader.readline())
    assert reply["error"]["code"] == LINE_TOO_LONG
    assert "daemon.request_read_timeout" in reply["error"]["message"]
    assert await reader.read() == b""


async def test_a_client_that_does_not_read_is_not_served_further(world, monkeypatch):
    monkeypatch.setattr(connection, "WRITE_TIMEOUT", 0.5)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, str(world.path))
    try:
        for i in range(20):  # 20 replies of 2 MiB asked for, none read
            await asyncio.get_running_loop().sock_sendall(sock, request_line("big", None, i))
        await eventually(lambda: world.big_calls >= 1)
        reader, writer = await world.connect()
        await send(writer, "ping")
        assert json.loads(await reader.readline())["result"] == "pong"  # the others are served meanwhile
        writer.close()
        # The first reply never drains: the connection is dropped, and no second reply was built.
        await eventually(lambda: world.server.clients == 0)
        assert world.big_calls == 1
    finally:
        sock.close()


async def test_max_clients_holds_for_everyone(world):
    world.server.limits = ClientLimits(max_clients=2, per_user=2, reserved=1)
    held = [await world.connect() for _ in range(2)]
    await eventually(lambda: world.server.clients == 2)
    reader, writer = await world.connect()
    reply = json.loads(await reader.readline())
    assert reply["error"]["code"] == BUSY and "daemon.max_clients" in reply["error"]["message"]
    assert await reader.read() == b""
    for _, w in held:
        w.close()
    await eventually(lambda: world.server.clients == 0)
    reader, writer = await world.connect()
    await send(writer, "ping")
    assert json.loads(await reader.readline())["result"] == "pong"
    writer.close()
