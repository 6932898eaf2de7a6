"""The Python the proxy runs per hit-path request, with in-memory transports: no sockets, no event-loop passes.

memwarden's proxy (over an arbiter that holds every model resident) and the bare asyncio-Protocol relay of
proxy_latency.py are each handed the bench's /api/generate request and the double's answer, as the protocols'
callbacks would be, in a hot loop (timeit): non-streamed, one answer of 508 bytes in one piece; streamed, the head
and 17 NDJSON chunks and the last chunk, each in a piece of its own, as the double sends them. What this leaves out
(system calls, wake-ups, caches a loaded machine has cooled) is what proxy_latency.py measures with it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import timeit
import types
from collections.abc import Callable
from typing import Any

from _common import emit, fmt, parser, table
from proxy_latency import PROTOCOL_RELAY

from memwarden.config.schema import ProxyConfig
from memwarden.proxy.client import ClientConnection
from memwarden.proxy.hop import UpstreamConnection
from memwarden.proxy.server import OllamaProxy

LINE = b'{"model":"m:1b","created_at":"2026-12-06T14:00:00.000000Z","response":"word ","done":false}\n'
DATE = b"Date: Sun, 06 Dec 2026 14:00:00 GMT\r\n"


class Transport(asyncio.Transport):
    """Takes what is written and keeps the last of it."""

    def __init__(self) -> None:
        super().__init__()
        self.last = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.last = bytes(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Resident:
    serving_busy_until = 0.0
    config = types.SimpleNamespace(ollama=types.SimpleNamespace(num_parallel=8, max_queue=512))

    def resident(self, model: str) -> bool:
        return True

    def loads_freely(self, model: str) -> bool:
        return False

    def note_use(self, model: str, keep_alive: str | None) -> None:
        pass

    def mark_resident(self, model: str) -> None:
        pass


def exchange(stream: bool) -> tuple[bytes, list[bytes]]:
    body = json.dumps({"model": "m:1b", "prompt": "Why is the sky blue?", "stream": stream}).encode()
    request = (b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAccept-Encoding: identity\r\n"
               b"Content-Length: %d\r\nContent-Type: application/json\r\n\r\n%s" % (len(body), body))
    if stream:
        pieces = [b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n" + DATE +
                  b"Transfer-Encoding: chunked\r\n\r\n"]
        pieces += [b"%x\r\n%s\r\n" % (len(LINE), LINE)] * 17 + [b"0\r\n\r\n"]
        return request, pieces
    answer = b'{"model":"m:1b","response":"' + b"x" * 460 + b'","done":true}'
    return request, [b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n" + DATE +
                     b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)]


def memwarden_cycle(request: bytes, pieces: list[bytes]) -> Callable[[], None]:
    proxy = OllamaProxy(Resident(), ProxyConfig(), "http://127.0.0.1:1")  # type: ignore[arg-type]
    client = ClientConnection(proxy, 300.0)
    client.connection_made(Transport())
    upstream = UpstreamConnection()
    upstream.connection_made(Transport())
    proxy.pool.give(upstream)

    def cycle() -> None:
        client.data_received(request)
        for piece in pieces:
            upstream.data_received(piece)

    cycle()
    if proxy.pool.idle != [upstream] or proxy.queue.in_flight:
        raise RuntimeError("the request did not go through the hit path and back to the pool")
    return cycle


def relay_cycle(request: bytes, pieces: list[bytes]) -> Callable[[], None]:
    relay: dict[str, Any] = {}
    exec(PROTOCOL_RELAY.rpartition("asyncio.run(")[0], relay)  # its protocols, without its server
    pool: list[Any] = []
    client = relay["Client"](pool, 1)
    client.connection_made(Transport())
    upstream = relay["Up"](pool)
    upstream.connection_made(Transport())
    pool.append(upstream)

    def cycle() -> None:
        client.data_received(request)
        for piece in pieces:
            upstream.data_received(piece)

    cycle()
    if pool != [upstream]:
        raise RuntimeError("the relay did not finish the answer")
    return cycle


async def measure(number: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode, stream in (("generate", False), ("ttfc", True)):
        request, pieces = exchange(stream)
        results[mode] = {name: round(min(timeit.repeat(make(request, pieces), number=number, repeat=5))
                                     / number * 1e6, 1)
                         for name, make in (("memwarden", memwarden_cycle), ("protocol_relay", relay_cycle))}
    return results


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=5000, help="requests per timing (the best of 5; default 5000)")
    args = p.parse_args()
    results = asyncio.run(measure(args.number))
    rows = [[title, fmt(results[mode]["memwarden"]), fmt(results[mode]["protocol_relay"]),
             fmt(round(results[mode]["memwarden"] - results[mode]["protocol_relay"], 1))]
            for mode, title in (("generate", "stream:false, one piece"), ("ttfc", "stream:true, 19 pieces"))]
    text = table(["µs of Python per request", "memwarden's proxy", "bare Protocol relay", "difference"], rows)
    emit("proxy hit path", text, {"number": args.number, **results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
