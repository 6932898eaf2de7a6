"""The drop-in Ollama proxy (aiohttp): point clients at proxy.listen instead of Ollama.

Requests that name a model go through admission first: a resident model is a hit (recency fed to the
scheduler, forwarded at once); a missing one asks the scheduler to make room. When a lease holds the room, the
request waits up to proxy.hold_timeout — or, with proxy.preempt, asks preemptible leases to yield. Everything is
forwarded unbuffered, so streamed NDJSON reaches the client chunk by chunk. Errors are Ollama-shaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

from memwarden.arbiter.arbiter import ArbiterError
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaError, normalize

if TYPE_CHECKING:
    from aiohttp import web

    from memwarden.arbiter.arbiter import GpuArbiter
    from memwarden.config.schema import ProxyConfig

log = get_logger()

MODEL_ENDPOINTS = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}
RETRY_AFTER_S = 30


def ollama_error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    from aiohttp import web

    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": message}, status=status, headers=headers)


def is_unload(body: dict[str, Any]) -> bool:
    empty = not body.get("prompt") and not body.get("messages")
    return empty and body.get("keep_alive") in (0, "0", "0s", "0m")


class OllamaProxy:
    def __init__(self, arbiter: GpuArbiter, cfg: ProxyConfig, upstream: str):
        self.arbiter = arbiter
        self.cfg = cfg
        self.upstream = upstream.rstrip("/")
        self.runner: Any = None
        self.session: Any = None
        self.requests = 0
        self.held = 0
        self.preemptions = 0

    async def start(self) -> None:
        import aiohttp
        from aiohttp import web

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False)
        app = web.Application(client_max_size=1024**4)  # blobs for /api/create pass through
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        host, _, port = self.cfg.listen.rpartition(":")
        await web.TCPSite(self.runner, host.strip("[]"), int(port)).start()
        log.info("Ollama proxy listening", listen=self.cfg.listen, upstream=self.upstream)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        model = None
        if request.method == "POST" and request.path in MODEL_ENDPOINTS:
            model, refusal = await self.admit(body)
            if refusal is not None:
                return refusal
        response = await self.forward(request, body)
        if model is not None and response.status == 200:
            self.arbiter.mark_resident(model)
        return response

    async def admit(self, raw: bytes) -> tuple[str | None, web.Response | None]:
        """(the model the request loads, or None) and None to forward it, or the Ollama-shaped error."""
        try:
            body = json.loads(raw)
            model = normalize(body["model"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None, None  # let Ollama answer a malformed request in its own words
        keep_alive = body.get("keep_alive")
        keep_alive = str(keep_alive) if isinstance(keep_alive, int | float | str) else None
        if is_unload(body):
            return None, None
        a = self.arbiter
        if self.cfg.preempt:
            a.serving_busy_until = time.monotonic() + self.cfg.resume_after_idle
        if a.resident(model):
            a.note_use(model, keep_alive)
            return model, None
        deadline = time.monotonic() + self.cfg.hold_timeout
        preempted: set[str] = set()
        while True:
            try:
                await a.ensure(model, keep_alive, load=False)
                return model, None
            except OllamaError as exc:
                return None, ollama_error(502, f"memwarden proxy: {exc}")
            except ArbiterError as exc:
                reason = str(exc)
                if "not installed" in reason:
                    return None, None  # Ollama's own 404 says it best
            if self.cfg.preempt:
                for lease in list(a.leases.values()):
                    if lease.preemptible and lease.state == "active" and lease.id not in preempted:
                        preempted.add(lease.id)
                        self.preemptions += 1
                        await a.preempt(lease.id, f"proxy request for {model}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("proxy request refused: GPU held", model=model, reason=reason,
                            held_s=self.cfg.hold_timeout)
                return None, ollama_error(503, f"memwarden: GPU busy, {reason}", RETRY_AFTER_S)
            self.held += 1
            async with a.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(a.changed.wait(), min(remaining, 5.0))

    async def forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        import aiohttp
        from aiohttp import web

        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = self.upstream + request.rel_url.raw_path_qs
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(request.method, url, data=body or None, headers=headers) as up:
                response = web.StreamResponse(status=up.status, reason=up.reason, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            if response is not None and response.prepared:
                # Mid-stream: the status is sent; cutting the stream short is all that is left to say.
                log.warning("proxied stream broken", url=url, error=repr(exc))
                return response
            return ollama_error(502, f"memwarden proxy: Ollama at {self.upstream} unreachable: {exc}")
