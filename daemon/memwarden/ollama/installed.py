"""Which models Ollama has (/api/tags), cached so that names from untrusted requests cost almost no calls.

The scheduler tracks only installed models. Proxy clients name any model they like; asking Ollama about each
name would let a burst of junk names turn into a burst of /api/tags calls. So the list is cached: a hit is
answered from it while it is younger than `ttl`; a name it lacks refreshes it at most once every `miss_refresh`
seconds (a model pulled or created a moment ago is still found quickly); callers that arrive while a refresh is
in flight share it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from memwarden.ollama.client import OllamaError, normalize

TTL_S = 10.0
MISS_REFRESH_S = 1.0


class InstalledModels:
    def __init__(self, client: Any, ttl: float = TTL_S, miss_refresh: float = MISS_REFRESH_S,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.ttl = ttl
        self.miss_refresh = miss_refresh
        self.clock = clock
        self.sizes: Mapping[str, int] | None = None  # normalized name → size, from the last successful call
        self.names: frozenset[str] | None = None  # the same names; a new object only when the list is fetched
        self.fetched_at = float("-inf")
        self.calls = 0
        self._failure: tuple[float, OllamaError] | None = None
        self._inflight: asyncio.Future[Mapping[str, int]] | None = None

    async def size_of(self, name: str) -> int | None:
        """The installed size of `name`, or None when Ollama does not have it. OllamaError when unreachable."""
        name = normalize(name)
        age = self.clock() - self.fetched_at
        if self.sizes is None or age >= self.ttl or (name not in self.sizes and age >= self.miss_refresh):
            await self.refresh()
        assert self.sizes is not None
        return self.sizes.get(name)

    async def refresh(self) -> Mapping[str, int]:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        inflight = self._inflight
        try:
            return await asyncio.shield(inflight)
        finally:
            if inflight.done() and self._inflight is inflight:
                self._inflight = None

    async def _fetch(self) -> Mapping[str, int]:
        # An unreachable Ollama is asked again only after miss_refresh, not once per request.
        if self._failure is not None and self.clock() - self._failure[0] < self.miss_refresh:
            raise OllamaError(str(self._failure[1]), self._failure[1].status)
        self.calls += 1
        try:
            models = await self.client.tags()
        except OllamaError as exc:
            self._failure = (self.clock(), exc)
            raise
        self._failure = None
        self.sizes = {normalize(m.name): m.size for m in models}
        self.names = frozenset(self.sizes)
        self.fetched_at = self.clock()
        return self.sizes
