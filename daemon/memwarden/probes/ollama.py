"""Ollama: resident models and their VRAM (/api/ps), installed models (/api/tags). Unreachable = degraded."""

from __future__ import annotations

import time
from collections.abc import Callable

from memwarden.ollama.client import OllamaClient
from memwarden.snapshots import OllamaSnapshot


class OllamaProbe:
    name = "ollama"

    def __init__(self, client: OllamaClient, clock: Callable[[], float] = time.time):
        self.client = client
        self._clock = clock

    async def read(self) -> OllamaSnapshot:
        loaded = await self.client.ps()
        installed = await self.client.tags()
        return OllamaSnapshot(self.client.url, True, self._clock(), tuple(loaded), tuple(installed))
