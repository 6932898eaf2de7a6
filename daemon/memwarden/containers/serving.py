"""Serving containers: which containers are an Ollama, where their API is, and how many models they hold.

Where the API is. A container whose image is named ollama is served at ollama.url. A container may name its API
with the label `memwarden.ollama_url=URL`, but only a URL the config lists (ollama.url or
containers.ollama_urls) is ever used. A label is written by whoever runs the container or built its image;
followed freely, it would have the daemon fetch any URL they choose, every pass, from the daemon's own network
position, and act on whatever the answer holds. A label naming another URL is ignored (logged once).

What is read. GET /api/ps over HTTP/1.0 (so the answer ends with the connection: no chunked encoding), with one
deadline for the whole exchange (connect, send, read) and at most MAX_ANSWER bytes. The answer must have
Ollama's shape, {"models": [{"name": …} or {"model": …}, …]}; anything else is an unknown count (None, with
the reason logged once per container), never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from memwarden.logs import get_logger
from memwarden.snapshots import ContainerMemory

log = get_logger()

LABEL = "memwarden.ollama_url"
MAX_ANSWER = 1 << 20  # bytes of /api/ps (status line and headers included); Ollama's is a few KiB


class ServingError(Exception):
    """The serving API could not be read, or answered something that is not Ollama's /api/ps."""


def url_key(url: str) -> tuple[str, str, int | None, str] | None:
    """(scheme, host, port, path) with defaults filled in, for comparing URLs; None when it does not parse."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), parts.path.rstrip("/")


class ServingUrls:
    """The URLs a serving container may be read at: ollama.url and containers.ollama_urls."""

    def __init__(self, default_url: str, allowed: Iterable[str] = ()):
        self.default_url = default_url
        self._allowed = {key: url for url in (default_url, *allowed) if url and (key := url_key(url))}

    def of(self, c: ContainerMemory) -> tuple[str | None, str | None]:
        """(the URL to read, or None; why the container's label was not used, or None)."""
        label = c.label(LABEL)
        if label:
            url = self._allowed.get(url_key(label)) if url_key(label) else None
            if url is not None:
                return url, None
            return (self._default(c), f"{LABEL}={label[:200]!r} is not one of the configured Ollama URLs "
                                      f"(ollama.url, containers.ollama_urls); ignored")
        return self._default(c), None

    def _default(self, c: ContainerMemory) -> str | None:
        return self.default_url if "ollama" in c.image.lower() and self.default_url else None


def parse_ps(raw: bytes) -> int:
    """The number of models in a raw HTTP answer to GET /api/ps; ServingError naming what is wrong."""

    class _Answer:
        def makefile(self, *_: object) -> io.BytesIO:
            return io.BytesIO(raw)

    resp = http.client.HTTPResponse(_Answer())  # type: ignore[arg-type]
    try:
        resp.begin()
        body = resp.read()
    except (http.client.HTTPException, ValueError) as exc:
        raise ServingError(f"not an HTTP answer: {type(exc).__name__}") from None
    if resp.status != 200:
        raise ServingError(f"HTTP {resp.status}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ServingError("the answer is not JSON") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("name") or m.get("model"), str) for m in models):
        raise ServingError('the answer is not Ollama\'s /api/ps ({"models": [{"name": ...}, ...]})')
    return len(models)


async def _exchange(url: str) -> bytes:
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl.create_default_context() if https else None,
                                                   limit=MAX_ANSWER)
    try:
        target = parts.path.rstrip("/") + "/api/ps"
        host_header = host if ":" not in host else f"[{host}]"
        writer.write(f"GET {target} HTTP/1.0\r\nHost: {host_header}:{port}\r\nAccept: application/json\r\n"
                     f"User-Agent: memwarden\r\n\r\n".encode())
        await writer.drain()
        raw = b""
        while len(raw) <= MAX_ANSWER and (more := await reader.read(MAX_ANSWER + 1 - len(raw))):
            raw += more
    finally:
        writer.close()
        with contextlib.suppress(Exception):  # a reset peer: nothing more to say to it
            await writer.wait_closed()
    if len(raw) > MAX_ANSWER:
        raise ServingError(f"the answer is larger than {MAX_ANSWER} bytes")
    return raw


async def models_loaded(url: str, timeout: float) -> int:
    """How many models the Ollama at `url` holds (/api/ps), within `timeout` seconds in all."""
    try:
        async with asyncio.timeout(timeout):
            raw = await _exchange(url)
    except TimeoutError:
        raise ServingError(f"no complete answer within {timeout:g}s") from None
    except OSError as exc:
        raise ServingError(f"unreachable: {exc.strerror or exc}") from None
    return parse_ps(raw)


ReadModels = Callable[[str, float], Awaitable[int]]  # (url, timeout) → models loaded there; ServingError: unknown


class ServingCounter:
    """How many models each serving container holds, each URL read once per pass; what cannot be read, or a
    label that is not used, is logged once (again only after it changed or cleared)."""

    def __init__(self, read: ReadModels = models_loaded):
        self._read_models = read
        self._said: dict[str, str] = {}  # what was last logged about a label or a URL

    def _say_once(self, about: str, problem: str | None, **fields: Any) -> None:
        if problem is not None and self._said.get(about) != problem:
            log.warning("serving container: " + problem, **fields)
        if problem is None:
            self._said.pop(about, None)
        else:
            self._said[about] = problem

    async def count(self, containers: Sequence[ContainerMemory], urls: ServingUrls,
                    timeout: float) -> list[int | None]:
        """Models loaded in each container, in order (None: not a serving container, or unknown)."""
        present = {f"label {c.name}" for c in containers}
        self._said = {k: v for k, v in self._said.items() if k in present or not k.startswith("label ")}
        where = []
        for c in containers:
            url, complaint = urls.of(c)
            self._say_once(f"label {c.name}", complaint, container=c.name)
            where.append(url)
        wanted = sorted({u for u in where if u is not None})
        counts = dict(zip(wanted, await asyncio.gather(*(self._read(u, timeout) for u in wanted)), strict=True))
        return [None if u is None else counts[u] for u in where]

    async def _read(self, url: str, timeout: float) -> int | None:
        try:
            count = await self._read_models(url, timeout)
        except ServingError as exc:
            self._say_once(f"url {url}", f"cannot count the models at {url}: {exc}", url=url)
            return None
        self._say_once(f"url {url}", None)
        return count
