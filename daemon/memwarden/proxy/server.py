"""The drop-in Ollama proxy (aiohttp): point clients at proxy.listen instead of Ollama.

Requests to the model endpoints go through admission first (admission.py), with their JSON body read whole but
capped (bodies.py); every other request, blob uploads included, streams through with its body never held.
Answers are forwarded unbuffered, so streamed NDJSON reaches the client chunk by chunk. Errors are
Ollama-shaped: {"error": "..."}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memwarden.logs import get_logger
from memwarden.policies import coalesce
from memwarden.proxy.admission import Admitter, read_request
from memwarden.proxy.bodies import BUFFERED_BODIES, CAPPED_ENDPOINTS, BodyBudget, Refusal, read_capped, too_large
from memwarden.proxy.queue import RequestQueue
from memwarden.units import format_size

if TYPE_CHECKING:
    from aiohttp import web

    from memwarden.arbiter.arbiter import GpuArbiter
    from memwarden.config.schema import ProxyConfig

log = get_logger()

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length", "expect"}


def ollama_error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    from aiohttp import web

    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": message}, status=status, headers=headers)


def refuse(refusal: Refusal) -> web.Response:
    return ollama_error(refusal.status, refusal.message, refusal.retry_after)


def capped(request: web.Request) -> bool:
    return request.method == "POST" and request.path in CAPPED_ENDPOINTS


class OllamaProxy:
    def __init__(self, arbiter: GpuArbiter, cfg: ProxyConfig, upstream: str):
        self.arbiter = arbiter
        self.upstream = upstream.rstrip("/")
        self.admitter = Admitter(arbiter, cfg)
        self.queue = RequestQueue(self.limits, lambda model: self.arbiter.resident(model))
        self.budget = BodyBudget(BUFFERED_BODIES * cfg.max_request_body)
        self._cfg = cfg
        self.runner: Any = None
        self.session: Any = None
        self.requests = 0
        self.refused_bodies = 0

    @property
    def cfg(self) -> ProxyConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: ProxyConfig) -> None:
        """A reload: the cap, the budget and admission's settings apply to the next request."""
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
        import aiohttp
        from aiohttp import web

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False)
        # No body is read through client_max_size: capped ones go through read_capped, the rest are streamed.
        app = web.Application(client_max_size=self.cfg.max_request_body)
        app.router.add_route("*", "/{tail:.*}", self.handle, expect_handler=self.expect)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        host, _, port = self.cfg.listen.rpartition(":")
        await web.TCPSite(self.runner, host.strip("[]"), int(port)).start()
        log.info("Ollama proxy listening", listen=self.cfg.listen, upstream=self.upstream,
                 max_request_body=self.cfg.max_request_body)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def expect(self, request: web.Request) -> web.Response | None:
        """Expect: 100-continue: a capped body announced over the cap is refused before it is sent."""
        if capped(request) and (request.content_length or 0) > self.cfg.max_request_body:
            return self._refuse_body(request, too_large(self.cfg.max_request_body,
                                                        f"of {format_size(request.content_length)} is"))
        from aiohttp.web_urldispatcher import _default_expect_handler

        await _default_expect_handler(request)
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if capped(request):
            return await self._admitted(request)
        return await self.forward(request, request.content if request.body_exists else None,
                                  request.content_length)

    async def _admitted(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await read_capped(request.content, request.content_length, self.cfg.max_request_body,
                                     self.budget)
        except (OSError, ValueError) as exc:  # the client hung up or broke its framing mid-body
            log.info("proxy request body not received", path=request.path, error=repr(exc)[:200])
            return ollama_error(400, "memwarden proxy: request body incomplete")
        if isinstance(body, Refusal):
            return self._refuse_body(request, body)
        try:
            assert body.raw is not None
            req = read_request(request.path, body.raw)
            if req.model is None or req.refused is not None or req.unload:
                return await self.forward(request, body.stream(), body.size)  # Ollama answers it in its words
            async with self.queue.slot(req.model) as ticket:
                try:
                    admission = await self.admitter.admit(req)
                finally:
                    self.queue.admitted(ticket)
                if admission.refusal is not None:
                    return refuse(admission.refusal)

                def answered(status: int) -> None:
                    if admission.model is not None and status == 200:
                        self.arbiter.mark_resident(admission.model)
                    self.queue.answered(ticket)

                return await self.forward(request, body.stream(), body.size, answered)
        finally:
            body.release()

    def _refuse_body(self, request: web.Request, refusal: Refusal) -> web.Response:
        self.refused_bodies += 1
        log.info("decision: proxy refuses a request body", decision="proxy.body", path=request.path,
                 status=refusal.status, declared=request.content_length, cap=self.cfg.max_request_body,
                 buffered=self.budget.used, buffered_limit=self.budget.limit)
        return refuse(refusal)

    async def forward(self, request: web.Request, data: Any, length: int | None,
                      answered: Callable[[int], None] | None = None) -> web.StreamResponse:
        """Send the request upstream with `data` as its body (streamed: never read whole here) and stream the
        answer back. `length` is sent as Content-Length when known, else the body goes chunked."""
        import aiohttp
        from aiohttp import web

        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if data is not None and length is not None:
            headers["Content-Length"] = str(length)
        url = self.upstream + request.rel_url.raw_path_qs
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(request.method, url, data=data, headers=headers,
                                            allow_redirects=False) as up:
                if answered is not None:
                    answered(up.status)
                response = web.StreamResponse(status=up.status, reason=up.reason, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError) as exc:
            if response is not None and response.prepared:
                # Mid-stream: the status is sent; cutting the stream short is all that is left to say.
                log.warning("proxied stream broken", url=url, error=repr(exc))
                return response
            return ollama_error(502, f"memwarden proxy: Ollama at {self.upstream} unreachable: {exc}")
