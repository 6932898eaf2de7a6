"""An async client for the few Ollama endpoints memwarden needs.

Ollama facts it respects: an unload (keep_alive 0) answers 200 before the VRAM is free; loads are slow and
serialized; /api/ps does not say which GPU a model is on.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from memwarden.snapshots import InstalledModel, LoadedModel
from memwarden.units import parse_go_duration, parse_keep_alive


class OllamaError(Exception):
    """Ollama was unreachable or answered with an error; the message says which and why."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def normalize(name: str) -> str:
    """Ollama's model names: 'llama3' means 'llama3:latest'."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def reported_load_seconds(answer: object) -> float | None:
    """The seconds Ollama says a request spent loading its model: the `load_duration` (nanoseconds) of the final
    object of an /api/generate or /api/chat answer. None when there is none, or 0 (the model was resident);
    Ollama's answer to a bare load (an empty prompt, done_reason "load") carries none."""
    if not isinstance(answer, dict):
        return None
    ns = answer.get("load_duration")
    if isinstance(ns, bool) or not isinstance(ns, int | float) or not math.isfinite(ns) or ns <= 0:
        return None
    return ns / 1e9


def keep_alive_value(seconds: float) -> int | str:
    """keep_alive for a request from seconds (inf = forever, which Ollama spells as a negative value)."""
    if seconds == float("inf"):
        return -1
    return int(seconds) if seconds == int(seconds) else f"{seconds}s"


GO_DURATION_MAX_S = (2**63 - 1) / 1e9  # time.Duration is int64 nanoseconds: Go refuses a string beyond this
FOREVER_AFTER_S = 100 * 365 * 86400  # a keep_alive this long is spelled as forever


def keep_alive_text(value: object) -> str:
    """A keep_alive as a request gives it (seconds, or a Go duration string; negative = forever) in the one
    spelling memwarden stores and sends back: "-1m" for forever, else whole seconds or milliseconds.

    ValueError, naming the value, for anything Ollama answers 400 for: another JSON type, a string that is no
    Go duration or overflows one, a number that is not finite.
    """
    if isinstance(value, str):
        if abs(parse_go_duration(value)) > GO_DURATION_MAX_S:
            raise ValueError(f"time: invalid duration {value!r}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"keep_alive must be a finite number, got {value!r}")
    seconds = parse_keep_alive(value)
    if seconds >= FOREVER_AFTER_S:
        return "-1m"
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class OllamaClient:
    """Blocking http.client calls run in a small thread pool, one keep-alive connection per thread.

    Not aiohttp: the daemon talks to Ollama on every sample pass, and aiohttp would add ~10 MB of RSS to a
    daemon that otherwise needs none of it (the proxy, which does need it, is opt-in).
    """

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ollama")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _call(self, method: str, path: str, payload: Any, timeout: float) -> tuple[int, str, bytes]:
        if isinstance(payload, Path):  # a blob upload: the file is streamed, never read whole into memory
            body: Any = payload.open("rb")
            headers = {"Content-Length": str(payload.stat().st_size), "Content-Type": "application/octet-stream"}
        else:
            body = None if payload is None else json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            conn = self._connection(timeout)
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                conn.request(method, self._base + path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.getheader("Content-Type") or "", resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()  # a kept-alive connection the server dropped: one fresh try
                self._local.conn = None
                if attempt == 2:
                    raise
            except BaseException:
                conn.close()
                self._local.conn = None
                raise
        raise AssertionError("unreachable")

    async def _request(self, method: str, path: str, json_body: Any = None, timeout: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            status, ctype, raw = await loop.run_in_executor(
                self._pool, self._call, method, path, json_body, timeout or self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise OllamaError(f"Ollama at {self.url} unreachable: {exc!r}") from None
        try:
            body: Any = json.loads(raw) if ctype.startswith("application/json") else raw.decode(errors="replace")
        except ValueError:
            body = raw.decode(errors="replace")
        if status >= 400:
            detail = body.get("error") if isinstance(body, dict) else str(body)[:200]
            raise OllamaError(f"Ollama {method} {path}: HTTP {status}: {detail}", status)
        return body

    async def version(self) -> str:
        return (await self._request("GET", "/api/version"))["version"]

    async def ps(self) -> list[LoadedModel]:
        body = await self._request("GET", "/api/ps")
        return [LoadedModel(name=m.get("name") or m["model"], size=int(m.get("size", 0)),
                            size_vram=int(m.get("size_vram", 0)), expires_at=m.get("expires_at"),
                            digest=m.get("digest")) for m in body.get("models") or []]

    async def tags(self) -> list[InstalledModel]:
        body = await self._request("GET", "/api/tags")
        return [InstalledModel(name=m.get("name") or m["model"], size=int(m.get("size", 0)), digest=m.get("digest"),
                               family=(m.get("details") or {}).get("family")) for m in body.get("models") or []]

    async def show(self, name: str) -> dict[str, Any]:
        return await self._request("POST", "/api/show", {"model": name})

    async def load(self, name: str, keep_alive: int | str) -> float | None:
        """An empty prompt loads the model (done_reason "load"); loads can take long, so a longer time-out.
        Returns the load seconds Ollama reports, None when it reports none (the caller then times the call)."""
        answer = await self._request("POST", "/api/generate", {"model": name, "prompt": "", "stream": False,
                                                               "keep_alive": keep_alive}, self.timeout * 10)
        return reported_load_seconds(answer)

    async def unload(self, name: str) -> None:
        """Ask for an unload. Returns when Ollama accepted it, which is BEFORE its VRAM is free."""
        await self._request("POST", "/api/generate", {"model": name, "prompt": "", "stream": False,
                                                      "keep_alive": 0})

    async def chat(self, body: dict[str, Any], timeout: float | None = None) -> str:
        """One /api/chat exchange, not streamed: the content of the model's answer."""
        reply = await self._request("POST", "/api/chat", {**body, "stream": False}, timeout)
        message = reply.get("message") if isinstance(reply, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise OllamaError(f"Ollama POST /api/chat: no message in the answer: {str(reply)[:200]}")
        return message["content"]

    async def has_blob(self, digest: str) -> bool:
        try:
            await self._request("HEAD", f"/api/blobs/{digest}")
        except OllamaError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def push_blob(self, path: Path) -> str:
        """Upload a file as a blob (unless Ollama has it already); returns its "sha256:<hex>" digest."""
        digest = "sha256:" + await asyncio.get_running_loop().run_in_executor(self._pool, _sha256, path)
        if not await self.has_blob(digest):
            await self._request("POST", f"/api/blobs/{digest}", path, self.timeout * 30)
        return digest

    async def create(self, model: str, base: str, adapters: dict[str, str]) -> None:
        """/api/create a model FROM `base` with an adapter (files → digests); Ollama takes one adapter."""
        body = await self._request("POST", "/api/create", {"model": model, "from": base, "adapters": adapters,
                                                           "stream": False}, self.timeout * 30)
        if isinstance(body, dict) and body.get("status") not in (None, "success"):
            raise OllamaError(f"Ollama create {model}: {body.get('status')}")

    async def copy(self, source: str, destination: str) -> None:
        await self._request("POST", "/api/copy", {"source": source, "destination": destination})

    async def delete(self, model: str) -> None:
        await self._request("DELETE", "/api/delete", {"model": model})

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_FROM_RE = re.compile(r"^FROM\s+(\S+)", re.M)


def model_blob_path(show: dict[str, Any]) -> str | None:
    """The weights file a model's runner is started with, from /api/show's modelfile ("FROM /…/sha256-…")."""
    match = _FROM_RE.search(show.get("modelfile") or "")
    return match.group(1) if match and match.group(1).startswith("/") else None
