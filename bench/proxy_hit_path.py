"""The Python the proxy runs per hit-path request, with in-memory transports: no sockets, no event-loop passes.

memwarden's proxy (over an arbiter that holds every model resident) and the bare asyncio-Protocol relay of
proxy_latency.py are each handed the bench's /api/generate request and the double's answer, as the protocols'
callbacks would be, in a hot loop (timeit): non-streamed, one answer of 508 bytes in one piece; streamed, the head
and 17 NDJSON chunks and the last chunk, each in a piece of its own, as the double sends them. The arbiter's
note_use does the scheduler's in-memory touch over 20 resident models. Beside the whole, the part a client waits
for: from the request's arrival to its write to Ollama, plus from the answer's first piece to its write to the
client (the median exchange's). What this leaves out (system calls, wake-ups, caches a loaded machine has
cooled) is what proxy_latency.py measures with it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import timeit
import types
from collections.abc import Callable
from typing import Any

from _common import emit, fmt, parser, table
from proxy_latency import PROTOCOL_RELAY

from memwarden.config.schema import ProxyConfig
from memwarden.policies import cache
from memwarden.proxy.client import ClientConnection
from memwarden.proxy.hop import UpstreamConnection
from memwarden.proxy.server import OllamaProxy

LINE = b'{"model":"m:1b","created_at":"2026-12-06T14:00:00.000000Z","response":"word ","done":false}\n'
DATE = b"Date: Sun, 06 Dec 2026 14:00:00 GMT\r\n"


class Transport(asyncio.Transport):
    """Takes what is written, keeps the last of it and when the first write since `at` was cleared came."""

    def __init__(self) -> None:
        super().__init__()
        self.last = b""
        self.at: float | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.last = bytes(data)
        if self.at is None:
            self.at = time.perf_counter()

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

    def __init__(self) -> None:
        self.cache = cache.CacheState.of(cache.Entry(f"m{i}:1b", 2 << 30, resident=True) for i in range(19))
        self.cache = cache.set_resident(self.cache, "m:1b", True, 2 << 30)
        self.dirty: set[str] = set()

    def note_use(self, model: str, keep_alive: str | None) -> None:  # as the scheduler's
        self.cache = cache.touch(self.cache, model, time.monotonic())
        self.dirty.add(model)

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


Cycle = Callable[[], None]
Cycles = tuple[Cycle, Cycle]  # the whole exchange; the same, returning the seconds a client waits on the Python


def cycles(client: asyncio.Protocol, upstream: asyncio.Protocol, request: bytes, pieces: list[bytes]) -> Cycles:
    client.connection_made(client_transport := Transport())
    upstream.connection_made(upstream_transport := Transport())

    def cycle() -> None:
        client.data_received(request)
        for piece in pieces:
            upstream.data_received(piece)

    def waited() -> float:  # type: ignore[return]
        upstream_transport.at = client_transport.at = None
        began = time.perf_counter()
        client.data_received(request)
        answer = time.perf_counter()
        upstream.data_received(pieces[0])
        for piece in pieces[1:]:
            upstream.data_received(piece)
        assert upstream_transport.at is not None and client_transport.at is not None
        return upstream_transport.at - began + client_transport.at - answer

    return cycle, waited  # type: ignore[return-value]


def memwarden_cycles(request: bytes, pieces: list[bytes]) -> Cycles:
    proxy = OllamaProxy(Resident(), ProxyConfig(), "http://127.0.0.1:1")  # type: ignore[arg-type]
    upstream = UpstreamConnection()
    made = cycles(ClientConnection(proxy, 300.0), upstream, request, pieces)
    proxy.pool.give(upstream)
    made[0]()
    if proxy.pool.idle != [upstream] or proxy.queue.in_flight:
        raise RuntimeError("the request did not go through the hit path and back to the pool")
    return made


def relay_cycles(request: bytes, pieces: list[bytes]) -> Cycles:
    relay: dict[str, Any] = {}
    exec(PROTOCOL_RELAY.rpartition("asyncio.run(")[0], relay)  # its protocols, without its server
    pool: list[Any] = []
    upstream = relay["Up"](pool)
    made = cycles(relay["Client"](pool, 1), upstream, request, pieces)
    pool.append(upstream)
    made[0]()
    if pool != [upstream]:
        raise RuntimeError("the relay did not finish the answer")
    return made


def median_waited(waited: Callable[[], float], number: int) -> float:
    """µs: the median over 5 × `number` exchanges (a median, as a mean of a few µs is swayed by each preemption
    on a loaded machine)."""
    return round(statistics.median(waited() for _ in range(5 * number)) * 1e6, 1)


async def measure(number: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode, stream in (("generate", False), ("ttfc", True)):
        request, pieces = exchange(stream)
        for name, make in (("memwarden", memwarden_cycles), ("protocol_relay", relay_cycles)):
            cycle, waited = make(request, pieces)
            results[mode] = {**results.get(mode, {}),
                             name: round(min(timeit.repeat(cycle, number=number, repeat=5)) / number * 1e6, 1),
                             f"{name}_waited": median_waited(waited, number)}
    return results


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=5000, help="requests per timing (the best of 5; default 5000)")
    args = p.parse_args()
    results = asyncio.run(measure(args.number))
    rows = [[f"{title}{part}", fmt(r[f"memwarden{key}"]), fmt(r[f"protocol_relay{key}"]),
             fmt(round(r[f"memwarden{key}"] - r[f"protocol_relay{key}"], 1))]
            for mode, title in (("generate", "stream:false, one piece"), ("ttfc", "stream:true, 19 pieces"))
            for r in [results[mode]]
            for key, part in (("", ", all of it"), ("_waited", ", before the writes up and down"))]
    text = table(["µs of Python per request", "memwarden's proxy", "bare Protocol relay", "difference"], rows)
    emit("proxy hit path", text, {"number": args.number, **results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
