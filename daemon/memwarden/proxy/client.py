"""A client's connection to the proxy, as an asyncio Protocol: request heads parsed as their bytes arrive, and
the common request sent on at once from the callback that completed it.

The hit path: a model request whose whole body came with its head or right behind it (the usual prompt), for a
resident model the queue would send at once (coalesce.goes_alone) and admission admits at once (Admitter.admit_hit),
or a request with no body; it goes to Ollama through hop.Exchange without a task, a coroutine or a StreamReader, and
the answer's bytes are written to this transport by the upstream connection's protocol. Every other request (one
that waits in the queue or for room, a body still arriving or too large, a streamed upload, an HTTP/1.0 client, a
refusal) is handled by the proxy's coroutines (server.py) in a task, reading from the same Inbox and writing through
this object as its writer; once it is answered, the next request takes the hit path again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from memwarden.logs import get_logger
from memwarden.proxy import http
from memwarden.proxy.admission import Admitter, read_request
from memwarden.proxy.bodies import CAPPED_ENDPOINTS, SMALL_BODY, BodyBudget
from memwarden.proxy.forward import ClientGone, Connection, Outcome, UpstreamFailed
from memwarden.proxy.hop import Exchange, UpstreamConnection
from memwarden.proxy.inbox import Inbox
from memwarden.proxy.queue import RequestQueue, Ticket
from memwarden.proxy.upstream import Pool

if TYPE_CHECKING:
    from memwarden.config.schema import ProxyConfig

log = get_logger()


class Proxy(Protocol):
    """What a connection takes from the proxy that accepted it (server.OllamaProxy): its limits and counts, the
    queue, admission and pool a hit goes through, and the coroutines that answer every other request."""

    cfg: ProxyConfig
    connections: set[ClientConnection]
    requests: int
    budget: BodyBudget
    queue: RequestQueue
    admitter: Admitter
    pool: Pool[UpstreamConnection]
    upstream: Pool[Connection]

    async def handle(self, head: http.Head, reader: Inbox, writer: ClientConnection) -> bool: ...

    def on_answer(self, ticket: Ticket | None, model: str | None) -> Callable[[int], None]: ...

    def unreachable(self, exc: UpstreamFailed) -> str: ...

BODY_WAIT_S = 0.05


def error_bytes(status: int, message: str, retry_after: int | None = None, close: bool = False) -> bytes:
    """An Ollama-shaped error answer: {"error": message}."""
    body = json.dumps({"error": message}).encode()
    headers = [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
    if retry_after:
        headers.append(("Retry-After", str(retry_after)))
    if close:
        headers.append(("Connection", "close"))
    return http.encode_head(f"HTTP/1.1 {status} {http.REASONS.get(status, 'Error')}", headers) + body


_KEPT_AS_SENT = frozenset({"host", "content-length"})


def request_bytes(head: http.Head, authority: str, body: bytes | bytearray | memoryview | None) -> bytes:
    """The request as Ollama gets it: its end-to-end headers, this hop's Host and framing, the body held whole.
    A head whose only hop-by-hop headers are one Host and, with a body, its one Content-Length (as curl, Go and
    http.client send one) goes as it came with its Host's value changed, instead of being written anew."""
    if (passed := _passed_on(head, authority, body)) is not None:
        return passed
    method, target, _ = head.start
    headers = [*head.forwarded(), ("Host", authority)]
    if body is not None:
        headers.append(("Content-Length", str(len(body))))
    return http.encode_head(f"{method} {target} HTTP/1.1", headers) + bytes(body or b"")


def _passed_on(head: http.Head, authority: str, body: bytes | bytearray | memoryview | None) -> bytes | None:
    fields, raw = head.fields, head.raw
    hop = fields.keys() & http.HOP_BY_HOP
    if not raw or hop != (_KEPT_AS_SENT if body is not None else {"host"}) or len(fields["host"]) > 1 or \
            not raw.startswith(head.start[0].encode("latin-1") + b" "):
        return None
    if body is not None and (len(fields["content-length"]) > 1 or fields["content-length"][0] != str(len(body))):
        return None
    start = raw.lower().find(b"\r\nhost:") + 2
    end = raw.find(b"\r\n", start)
    return raw[:start] + b"Host: " + authority.encode("latin-1") + raw[end:] + bytes(body or b"")


class ClientConnection(asyncio.Protocol):
    def __init__(self, proxy: Proxy, idle_s: float):
        self.proxy = proxy
        self.idle_s = idle_s  # the limit on waiting for a request's head, kept by one timer for the connection
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.inbox: Inbox = None  # type: ignore[assignment]
        self.paused = False  # the transport's write buffer is over its high-water mark
        self.busy = False  # a request is being answered: the next head waits in the inbox
        self.exchange: Exchange | None = None
        self.since: float | None = None  # when the wait for the next head began
        self._drained: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending: http.Head | None = None  # a hit-path request whose body is still on its way
        self._body_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # the coroutines answering the current request, if they do

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.inbox = Inbox(transport, http.MAX_HEAD)
        self.proxy.connections.add(self)
        self.since = self.loop.time()
        self._timer = self.loop.call_at(self.since + self.idle_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.inbox.feed(data)
        if self._pending is not None:
            self._dispatch_pending()
        elif not self.busy:
            self._next()

    def eof_received(self) -> bool:
        self.inbox.feed_eof()
        if self._pending is not None:
            self._dispatch_pending()
        elif not self.busy:
            self._next()
        return True  # an answer under way still goes out; the connection closes after it

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)
        for timer in (self._timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._pending = None
        self.inbox.feed_eof()
        if self.exchange is not None:
            self.exchange.client_gone()
        self._wake_drain()

    def pause_writing(self) -> None:
        self.paused = True
        if self.exchange is not None:
            self.exchange.pause()

    def resume_writing(self) -> None:
        self.paused = False
        if self.exchange is not None:
            self.exchange.resume()
        self._wake_drain()

    # The writer of the requests the proxy's coroutines answer (an asyncio.StreamWriter's methods they use)
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        while True:
            if self.transport.is_closing():
                raise ConnectionResetError("Connection lost")
            if not self.paused:
                return
            self._drained = self.loop.create_future()
            await self._drained

    def _wake_drain(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        self.transport.write_eof()

    def close(self) -> None:
        self.transport.close()

    # Requests
    def _next(self) -> None:
        """Take the next request from the inbox, if its head is whole."""
        if self.transport.is_closing():
            return
        buffer = self.inbox.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > http.MAX_HEAD:
                self._refuse(http.BadMessage("request head too large", 431))
            elif self.inbox.eof:
                if buffer.strip():
                    self._refuse(http.BadMessage("connection closed mid-head"))
                else:
                    self.transport.close()
            elif self.since is None:
                self.since = self.loop.time()
            return
        try:
            head = http.parse_head(self.inbox.taken(end + 4))
        except http.BadMessage as exc:
            self._refuse(exc)
            return
        self.since = None
        self.busy = True
        self._dispatch(head, may_wait=True)

    def _dispatch(self, head: http.Head, may_wait: bool) -> None:
        try:
            hit = self._hit(head, may_wait)
        except Exception:  # one connection's failure never reaches the daemon
            log.exception("proxy connection failed")
            self.transport.close()
            return
        if hit is None:
            # http.client, among others, sends a body in a write of its own right behind its head: it is given
            # a moment to arrive for the hit path before the coroutines read it, with their deadline.
            self._pending = head
            self._body_timer = self.loop.call_later(BODY_WAIT_S, self._dispatch_pending)
        elif not hit:
            self.task = self.loop.create_task(self._handled(head))  # held here: the loop holds tasks weakly

    def _dispatch_pending(self) -> None:
        head, self._pending = self._pending, None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if head is not None and not self.transport.is_closing():
            self._dispatch(head, may_wait=False)

    def _refuse(self, exc: http.BadMessage) -> None:
        self.transport.write(error_bytes(exc.status, f"memwarden proxy: {exc}", close=True))
        self.transport.close()

    def _check_idle(self) -> None:
        now = self.loop.time()
        if self.since is not None and now - self.since >= self.idle_s:
            self.transport.close()  # idle too long, or a head never finished: nothing to answer
            return
        self._timer = self.loop.call_at((now if self.since is None else self.since) + self.idle_s, self._check_idle)

    async def _handled(self, head: http.Head) -> None:
        try:
            keep = await self.proxy.handle(head, self.inbox, self)
        except (ConnectionError, ClientGone):
            keep = False  # gone: nothing to answer
        except Exception:  # one connection's failure never reaches the daemon
            log.exception("proxy connection failed")
            keep = False
        self._answered(keep)

    def _answered(self, keep: bool) -> None:
        self.busy = False
        self.exchange = None
        if keep:
            self._next()
        else:
            self.transport.close()

    def _hit(self, head: http.Head, may_wait: bool) -> bool | None:
        """Send the request on at once if it takes the hit path; False leaves it to the proxy's coroutines, None
        (only when `may_wait`) waits for the rest of its body."""
        method, target, version = head.start
        if version != "HTTP/1.1" or "expect" in head.fields:
            return False
        if "transfer-encoding" in head.fields:
            return False  # streamed up, or framing the coroutines refuse
        try:
            length = head.length
        except http.BadMessage:
            return False
        keep = "close" not in head.tokens("connection")
        proxy = self.proxy
        path = target.split("?", 1)[0]
        if not (method == "POST" and path in CAPPED_ENDPOINTS):
            if length:
                return False  # a body that is not read, only streamed up (a blob upload)
            proxy.requests += 1
            self.send(head, None, keep)
            return True
        if length is None or length > min(SMALL_BODY, proxy.cfg.max_request_body):
            return False
        if len(self.inbox.buffer) < length:
            return None if may_wait else False
        raw = bytes(self.inbox.buffer[:length])
        req = read_request(path, raw)
        if not proxy.budget.take(length):
            return False  # the coroutines refuse it
        queued = req.model is not None and req.refused is None and not req.unload  # not left to Ollama's words
        ticket = proxy.queue.at_once(req.model) if queued and req.model is not None else None
        admission = None if queued and ticket is None else proxy.admitter.admit_hit(req)
        if admission is None:
            proxy.budget.give(length)
            if ticket is not None:
                proxy.queue.finished(ticket)
            return False
        self.inbox.drop(length)
        self.send(head, raw, keep, proxy.on_answer(ticket, admission.model), ticket,
                  lambda: proxy.budget.give(length))
        # What does not change what is sent is done once the request is on its way, before this callback
        # returns: nothing else runs on the loop in between, so no eviction is planned without this use.
        proxy.requests += 1
        proxy.admitter.noted(req, admission)
        return True

    def send(self, head: http.Head, body: bytes | bytearray | memoryview | None, keep: bool,
             answered: Callable[[int], None] | None = None, ticket: Ticket | None = None,
             release: Callable[[], None] | None = None, outcome: asyncio.Future[Outcome | UpstreamFailed] | None = None,
             want_tail: bool = False) -> None:
        """Forward a request whose body is held (or absent) through the hop. With `outcome`, its result is
        given there for the coroutine awaiting it to act on; without, this connection acts on it itself, and
        gives `ticket` back to the queue."""
        proxy = self.proxy

        def done(result: Outcome | UpstreamFailed | ClientGone) -> None:
            if release is not None:
                release()
            if outcome is not None:
                self.exchange = None
                if outcome.done():  # the coroutine awaiting it was cancelled
                    return
                if isinstance(result, ClientGone):
                    outcome.set_exception(result)
                else:
                    outcome.set_result(result)
                return
            if ticket is not None:
                proxy.queue.finished(ticket)
            if isinstance(result, UpstreamFailed):
                self.transport.write(error_bytes(502, f"memwarden proxy: {proxy.unreachable(result)}", close=True))
            self._answered(isinstance(result, Outcome) and result.keep_alive)

        request = request_bytes(head, proxy.pool.origin.authority, body)
        self.exchange = Exchange(proxy.pool, self, head.start[0], request, keep, done, answered, want_tail)
        self.exchange.start()
