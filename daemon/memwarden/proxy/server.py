"""The drop-in Ollama proxy: point clients at proxy.listen instead of Ollama.

HTTP/1.1 of its own (http.py) on asyncio Protocols: a client connection (client.py) sends the common request, a
hit, through the thin hop (hop.py) from the callback that received it; this module's coroutines answer the others.
Forwarded over raw connections to Ollama kept between requests (upstream.py): hop.py's Protocols, or forward.py's
streams for a streamed request body or an HTTP/1.0 client; no HTTP library in the daemon, and no body gathered that
need not be. Requests to the model endpoints have their JSON body read whole but capped (bodies.py), wait in the
queue for the coalescing policy's word (queue.py) and go through admission (admission.py); every other request,
blob uploads included, streams through with its body never held. Answers stream back as they come, so NDJSON
reaches the client line by line. Errors are Ollama-shaped: {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from memwarden.logs import get_logger
from memwarden.policies import coalesce
from memwarden.proxy import http
from memwarden.proxy.admission import Admitter, read_request
from memwarden.proxy.bodies import (
    BUFFERED_BODIES,
    CAPPED_ENDPOINTS,
    SMALL_BODY,
    BodyBudget,
    Refusal,
    read_capped,
    read_small,
    too_large,
)
from memwarden.proxy.client import ClientConnection, error_bytes
from memwarden.proxy.forward import Body, ClientGone, Connection, Outcome, UpstreamFailed, forward, reported_load_ns
from memwarden.proxy.hop import UpstreamConnection
from memwarden.proxy.inbox import Inbox
from memwarden.proxy.queue import RequestQueue, Ticket
from memwarden.proxy.upstream import Origin, Pool
from memwarden.units import format_size

if TYPE_CHECKING:
    from memwarden.arbiter.arbiter import GpuArbiter
    from memwarden.config.schema import ProxyConfig

log = get_logger()

IDLE_S = 300.0  # a client connection with no request (or a head not finished) for this long is closed
# A refused body's sender gets this long to stop sending and read the refusal (nginx's lingering_time and
# lingering_timeout): what it still sends is read and dropped, never held.
LINGER_S = 30.0
LINGER_IDLE_S = 5.0


class _Chunks:
    """A client's body as read_capped reads it (iter_any), with its failures told apart from Ollama's."""

    def __init__(self, chunks: AsyncIterator[bytes]):
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._chunks:
                yield data
        except (OSError, asyncio.IncompleteReadError, http.BadMessage) as exc:
            raise ClientGone(repr(exc)[:200]) from None


async def error_answer(writer: ClientConnection, status: int, message: str, retry_after: int | None = None,
                       close: bool = False) -> None:
    writer.write(error_bytes(status, message, retry_after, close))
    await writer.drain()


async def linger(reader: Inbox, writer: ClientConnection) -> None:
    """After an answer sent while the client was still sending: end our side, then read and drop what it still
    sends (briefly), so that closing does not reset the connection before the client has read the answer."""
    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            while await asyncio.wait_for(reader.read(http.READ_SIZE), LINGER_IDLE_S):
                pass


class OllamaProxy:
    def __init__(self, arbiter: GpuArbiter, cfg: ProxyConfig, upstream: str):
        self.arbiter = arbiter
        self.upstream_url = upstream.rstrip("/")
        origin = Origin.of(self.upstream_url)
        self.upstream = Pool(origin, Connection.open)  # for streamed request bodies and HTTP/1.0 clients
        self.pool = Pool(origin, UpstreamConnection.open)  # for all the others
        self.admitter = Admitter(arbiter, cfg)
        self.queue = RequestQueue(self.limits, lambda model: self.arbiter.resident(model),
                                  loads_freely=lambda model: self.arbiter.loads_freely(model))
        self.budget = BodyBudget(BUFFERED_BODIES * cfg.max_request_body)
        self._cfg = cfg
        self.server: asyncio.Server | None = None
        self.connections: set[ClientConnection] = set()
        self.requests = 0
        self.refused_bodies = 0

    @property
    def cfg(self) -> ProxyConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: ProxyConfig) -> None:
        """A reload: the cap, the budget, max_wait and admission's settings apply to the next request."""
        self._cfg = cfg
        self.admitter.cfg = cfg
        self.budget.limit = BUFFERED_BODIES * cfg.max_request_body

    def limits(self) -> coalesce.Limits:
        ollama = self.arbiter.config.ollama
        return coalesce.Limits(self._cfg.max_wait, ollama.num_parallel, ollama.max_queue)

    @property
    def held(self) -> int:
        """Requests that waited for a lease to give the room back."""
        return self.admitter.held

    @property
    def preemptions(self) -> int:
        """Preemptible leases asked to yield."""
        return self.admitter.preemptions

    @preemptions.setter
    def preemptions(self, value: int) -> None:
        self.admitter.preemptions = value

    async def start(self) -> None:
        host, _, port = self.cfg.listen.rpartition(":")
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ClientConnection(self, IDLE_S), host.strip("[]"), int(port))
        log.info("Ollama proxy listening", listen=self.cfg.listen, upstream=self.upstream_url,
                 max_request_body=self.cfg.max_request_body, max_wait=self.cfg.max_wait)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()
        self.upstream.close()
        self.pool.close()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.server.wait_closed()

    def on_answer(self, ticket: Ticket | None, model: str | None) -> Callable[[int], None]:
        """What Ollama's answer head tells, by its status: the model is resident, a load it started is over."""

        def answered(status: int) -> None:
            if model is not None and status == 200:
                self.arbiter.mark_resident(model)
            if ticket is not None:
                self.queue.answered(ticket)

        return answered

    def unreachable(self, exc: UpstreamFailed) -> str:
        return f"Ollama at {self.upstream_url} unreachable: {exc}"

    async def handle(self, head: http.Head, reader: Inbox, writer: ClientConnection) -> bool:
        """Answer one request; whether the connection may carry another."""
        self.requests += 1
        method, target, version = head.start
        http11 = version == "HTTP/1.1"
        if not http11 and version != "HTTP/1.0":
            await error_answer(writer, 400, f"memwarden proxy: unsupported {version[:20]}", close=True)
            return False
        keep = "close" not in head.tokens("connection") if http11 else "keep-alive" in head.tokens("connection")
        try:
            length, chunked = head.length, head.chunked
        except http.BadMessage as exc:
            await error_answer(writer, exc.status, f"memwarden proxy: {exc}", close=True)
            return False
        has_body = chunked or bool(length)
        expects = http11 and has_body and (head.get("expect") or "").lower() == "100-continue"
        path = target.split("?", 1)[0]
        if method == "POST" and path in CAPPED_ENDPOINTS:
            return await self._admitted(head, path, reader, writer, length, chunked, expects, http11, keep)
        if expects:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = _Chunks(http.body(reader, length, chunked)).iter_any() if has_body else None
        return await self._forward(head, writer, body, None if chunked else length, http11, keep)

    async def _admitted(self, head: http.Head, path: str, reader: Inbox,
                        writer: ClientConnection, length: int | None, chunked: bool, expects: bool,
                        http11: bool, keep: bool) -> bool:
        cap = self.cfg.max_request_body
        if length is not None and length > cap:  # refused before a byte is read (or sent, with Expect)
            return await self._refuse_body(reader, writer, path, length,
                                           too_large(cap, f"of {format_size(length)} is"))
        if expects:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            if length is not None and length <= SMALL_BODY:
                body = await read_small(reader, length, cap, self.budget)
            else:
                body = await read_capped(_Chunks(http.body(reader, length, chunked)), length, cap, self.budget)
        except (ClientGone, OSError, asyncio.IncompleteReadError) as exc:  # the client hung up mid-body
            log.info("proxy request body not received", path=path, error=repr(exc)[:200])
            await error_answer(writer, 400, "memwarden proxy: request body incomplete", close=True)
            return False
        if isinstance(body, Refusal):
            return await self._refuse_body(reader, writer, path, length, body)
        try:
            assert body.raw is not None
            req = read_request(path, body.raw)
            if req.model is None or req.refused is not None or req.unload:  # Ollama answers it in its words
                return await self._forward(head, writer, body.raw, body.size, http11, keep)
            async with self.queue.slot(req.model) as ticket:
                try:
                    admission = await self.admitter.admit(req)
                finally:
                    self.queue.admitted(ticket)
                if admission.refusal is not None:
                    r = admission.refusal
                    await error_answer(writer, r.status, r.message, r.retry_after, close=not keep)
                    return keep
                return await self._forward(head, writer, body.raw, body.size, http11, keep,
                                           ticket, admission.model)
        finally:
            body.release()

    async def _refuse_body(self, reader: Inbox, writer: ClientConnection, path: str,
                           declared: int | None, refusal: Refusal) -> bool:
        self.refused_bodies += 1
        log.info("decision: proxy refuses a request body", decision="proxy.body", path=path,
                 status=refusal.status, declared=declared, cap=self.cfg.max_request_body,
                 buffered=self.budget.used, buffered_limit=self.budget.limit)
        # The rest of the body is unread: the connection cannot carry another request.
        await error_answer(writer, refusal.status, refusal.message, refusal.retry_after, close=True)
        await linger(reader, writer)
        return False

    async def _forward(self, head: http.Head, writer: ClientConnection, body: Body, length: int | None,
                       http11: bool, keep: bool, ticket: Ticket | None = None, model: str | None = None) -> bool:
        answered = self.on_answer(ticket, model)
        method, target, _ = head.start
        try:
            if http11 and (body is None or isinstance(body, bytes | bytearray | memoryview)):
                sent: asyncio.Future[Outcome | UpstreamFailed] = asyncio.get_running_loop().create_future()
                writer.send(head, body, keep, answered, outcome=sent,
                            want_tail=ticket is not None and ticket.started_load)
                got = await sent
                if isinstance(got, UpstreamFailed):
                    raise got
                outcome = got
            else:
                outcome = await forward(self.upstream, method, target, head.forwarded(), body, length, writer,
                                        http11, keep, answered)
        except UpstreamFailed as exc:
            await error_answer(writer, 502, f"memwarden proxy: {self.unreachable(exc)}", close=True)
            return False
        # The load time the eviction policy weighs, from an answer whose request loaded its model: a resident
        # model's answers report milliseconds, which are no load.
        if model is not None and outcome.status == 200 and ticket is not None and ticket.started_load:
            ns = reported_load_ns(outcome.tail)
            if ns is not None:
                self.arbiter.note_answer(model, {"load_duration": ns})
        return outcome.keep_alive
