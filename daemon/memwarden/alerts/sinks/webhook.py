"""POST each alert event as JSON, with a time-out and retries with exponential backoff."""

from __future__ import annotations

import asyncio
from typing import Any

from memwarden import __version__
from memwarden.alerts.sinks.queued import QueuedSink
from memwarden.logs import get_logger

log = get_logger()


class WebhookSink(QueuedSink):
    name = "webhook"

    def __init__(self, url: str, timeout: float, retries: int, backoff: float = 0.5):
        super().__init__()
        self.url = url
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

    async def deliver(self, event: dict[str, Any]) -> bool:
        import aiohttp

        session = await self._client()
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with session.post(self.url, json=event) as resp:
                    if resp.status < 300:
                        return True
                    last_error = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # the receiver rejects this event; resending will not help
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_error = repr(exc)
        log.warning("webhook delivery failed", url=self.url, kind=event.get("kind"), error=last_error,
                    attempts=attempt + 1)
        return False

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()
