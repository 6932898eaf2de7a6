"""An async client for the few Ollama endpoints memwarden needs (aiohttp, one shared session).

Ollama facts it respects: an unload (keep_alive 0) answers 200 before the VRAM is free; loads are slow and
serialized; /api/ps does not say which GPU a model is on.
"""

from __future__ import annotations

import re
from typing import Any

from memwarden.snapshots import InstalledModel, LoadedModel


class OllamaError(Exception):
    """Ollama was unreachable or answered with an error; the message says which and why."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def normalize(name: str) -> str:
    """Ollama's model names: 'llama3' means 'llama3:latest'."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def keep_alive_value(seconds: float) -> int | str:
    """keep_alive for a request from seconds (inf = forever, which Ollama spells as a negative value)."""
    if seconds == float("inf"):
        return -1
    return int(seconds) if seconds == int(seconds) else f"{seconds}s"


class OllamaClient:
    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session: Any = None

    async def session(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout))
        return self._session

    async def _request(self, method: str, path: str, json: Any = None, timeout: float | None = None) -> Any:
        import aiohttp

        session = await self.session()
        try:
            async with session.request(method, self.url + path, json=json,
                                       timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as resp:
                if resp.content_type == "application/json":
                    body = await resp.json()
                else:
                    body = await resp.text()
                if resp.status >= 400:
                    detail = body.get("error") if isinstance(body, dict) else str(body)[:200]
                    raise OllamaError(f"Ollama {method} {path}: HTTP {resp.status}: {detail}", resp.status)
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OllamaError(f"Ollama at {self.url} unreachable: {exc!r}") from None

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

    async def load(self, name: str, keep_alive: int | str) -> None:
        """An empty prompt loads the model (done_reason "load"); loads can take long, so a longer time-out."""
        await self._request("POST", "/api/generate", {"model": name, "prompt": "", "stream": False,
                                                      "keep_alive": keep_alive}, timeout=self.timeout * 10)

    async def unload(self, name: str) -> None:
        """Ask for an unload. Returns when Ollama accepted it, which is BEFORE its VRAM is free."""
        await self._request("POST", "/api/generate", {"model": name, "prompt": "", "stream": False,
                                                      "keep_alive": 0})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


_FROM_RE = re.compile(r"^FROM\s+(\S+)", re.M)


def model_blob_path(show: dict[str, Any]) -> str | None:
    """The weights file a model's runner is started with, from /api/show's modelfile ("FROM /…/sha256-…")."""
    match = _FROM_RE.search(show.get("modelfile") or "")
    return match.group(1) if match and match.group(1).startswith("/") else None
