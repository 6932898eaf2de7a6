"""GET /metrics on metrics.listen, answered on the daemon's own asyncio loop.

A few lines of asyncio instead of prometheus_client's start_http_server (a thread: it would read the daemon's
state off the loop, racing the sample pass) or aiohttp.web (about 2 MB of RSS for one route). One request per
connection, answered and closed: Prometheus scrapes every few seconds at most, and a scraper that keeps the
connection open gains nothing here. The registry is private, so the default registry's process and GC
collectors (which re-read /proc on every scrape) are not exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from types import MappingProxyType
from typing import TYPE_CHECKING

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from memwarden.alerts.model import Condition
from memwarden.logs import get_logger
from memwarden.loopback import is_loopback
from memwarden.metrics.collector import DaemonCollector

if TYPE_CHECKING:
    from memwarden.services import Services

log = get_logger()

MAX_HEAD = 16 * 1024  # request line and headers; a scraper sends a few hundred bytes
HEAD_TIMEOUT = 10.0  # a client that never finishes its request does not keep a connection open
INDEX = b'<html><head><title>memwarden</title></head><body><a href="/metrics">Metrics</a></body></html>\n'
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error"}


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)




class MetricsServer:
    def __init__(self, services: Services, listen: str):
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(services))
        self.server: asyncio.Server | None = None
        self.error: str | None = None  # why the last attempt to listen failed
        self.port: int | None = None  # the port bound (differs from metrics.listen's only when that says 0)

    async def start(self) -> bool:
        """Listen on metrics.listen; False (logged once per distinct reason) when the address cannot be had."""
        host, port = split_listen(self.listen)
        try:
            self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        except OSError as exc:
            # asyncio words a bind failure "error while attempting to bind on address (...): ..."; the errno's
            # own text is what a reader needs next to the address. Resolver errors have only their own text.
            if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
                error = os.strerror(exc.errno)
            else:
                error = exc.strerror or str(exc)
            if error != self.error:
                log.error("metrics not served: cannot listen on metrics.listen; retrying every sample pass",
                          listen=self.listen, error=error)
            self.error = error
            return False
        self.port = self.server.sockets[0].getsockname()[1]
        self.error = None
        log.info("metrics listening", listen=self.listen, url=f"http://{host if ':' not in host else f'[{host}]'}"
                 f":{self.port}/metrics")
        if not is_loopback(host):
            log.warning("metrics.listen is not a loopback address: anyone who can reach it reads the metrics "
                        "(no authentication); firewall it or put a proxy with authentication in front",
                        listen=self.listen)
        return True

    async def check(self) -> list[Condition]:
        """Each sample pass: retry a failed listen; while metrics are not served, a condition saying why."""
        if self.server is not None or await self.start():
            return []
        return [Condition("metrics.unavailable", self.listen, "warning",
                          f"metrics not served: cannot listen on metrics.listen {self.listen}: {self.error}",
                          MappingProxyType({"listen": self.listen, "error": self.error}))]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
            self.server = None

    def respond(self, method: str, target: str, accept: str) -> tuple[int, str, bytes, dict[str, str]]:
        """(status, content type, body, extra headers) for one request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n", {"Allow": "GET, HEAD"}
        path = target.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(self.registry), {}
        if path == "/":
            return 200, "text/html; charset=utf-8", INDEX, {}
        return 404, "text/plain; charset=utf-8", b"not found: try /metrics\n", {}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        request = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if len(request) != 3 or not request[2].startswith("HTTP/1."):
            status, content_type, body, extra = 400, "text/plain; charset=utf-8", b"bad request\n", {}
        else:
            try:
                status, content_type, body, extra = self.respond(request[0], request[1], headers.get("accept", ""))
            except Exception:  # a scrape that fails must not take the daemon down
                log.exception("metrics scrape failed")
                status, content_type, body, extra = 500, "text/plain; charset=utf-8", b"scrape failed\n", {}
        out = [f"HTTP/1.1 {status} {REASONS[status]}", f"Content-Type: {content_type}",
               f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in extra.items())]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        if request[0] != "HEAD":
            writer.write(body)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        writer.close()
