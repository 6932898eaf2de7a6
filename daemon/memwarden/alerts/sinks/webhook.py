"""POST each alert event as JSON, with a time-out and retries with exponential backoff.

The URL is a secret (it carries the receiver's token): logs show its origin only (config/redact.py). A redirect
is followed only to the same origin (scheme, host and port) and only when it keeps the method and body (307,
308), at most MAX_REDIRECTS times; any other redirect is a delivery failure that names where it pointed (as an
origin), so the event and its credentials never reach a host nobody configured.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urljoin, urlsplit

from memwarden import __version__
from memwarden.alerts.sinks.queued import QueuedSink
from memwarden.config.redact import fragments, redact_text, redact_url
from memwarden.logs import get_logger

log = get_logger()

MAX_REDIRECTS = 3
KEEPS_BODY = (307, 308)  # 301/302/303 turn a POST into a GET: not a delivery


class RedirectRefused(Exception):
    """A redirect memwarden does not follow; the message says where it pointed (an origin) and why."""


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in; a port that does not parse is -1."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class WebhookSink(QueuedSink):
    name = "webhook"

    def __init__(self, url: str, timeout: float, retries: int, backoff: float = 0.5):
        super().__init__()
        self.url = url
        self.shown = redact_url(url, secret=True)
        self._secrets = fragments(url, secret=True)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._session: Any = None

    async def _client(self) -> Any:
        if self._session is None:
            import aiohttp  # imported on first use: the daemon stays small when no webhook is set

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": f"memwarden/{__version__}"})
        return self._session

    async def _post(self, session: Any, event: dict[str, Any]) -> int:
        """POST to the URL, following same-origin 307/308 redirects; the final status."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            async with session.post(url, json=event, allow_redirects=False) as resp:
                if not 300 <= resp.status < 400 or resp.status == 304:
                    return resp.status
                target = urljoin(url, resp.headers.get("Location", ""))
            if resp.status not in KEEPS_BODY:
                raise RedirectRefused(f"HTTP {resp.status} redirect to {redact_url(target, secret=True)} not "
                                      f"followed (only 307/308 keep the POST)")
            if origin(target) != origin(self.url):
                raise RedirectRefused(f"HTTP {resp.status} redirect to another origin "
                                      f"({redact_url(target, secret=True)}) refused")
            url = target
        raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects")

    async def deliver(self, event: dict[str, Any]) -> bool:
        import aiohttp

        session = await self._client()
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status = await self._post(session, event)
            except RedirectRefused as exc:
                last_error = str(exc)
                break  # the receiver's answer will not change by resending
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last_error = repr(exc)
                continue
            if status < 300:
                return True
            last_error = f"HTTP {status}"
            if 400 <= status < 500 and status not in (408, 429):
                break  # the receiver rejects this event; resending will not help
        log.warning("webhook delivery failed", url=self.shown, kind=event.get("kind"),
                    error=redact_text(last_error, self._secrets), attempts=attempt + 1)
        return False

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()
