"""Request bodies through the proxy, in bounded memory.

Only the bodies admission must read are held in memory: the JSON of the model endpoints, each at most
proxy.max_request_body, and all of them together at most BUFFERED_BODIES times that (counted as bytes arrive, so
a client that only announces a large body holds nothing; one of at most SMALL_BODY is counted whole at once and
read in one call). Every other body, blob uploads above all, is never
held: the client's stream is the upstream request's body, read chunk by chunk as Ollama takes it, so a slow
Ollama slows the client down instead of filling the daemon's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from memwarden.units import format_size

# The JSON endpoints whose body admission reads (the model, keep_alive, whether it is an unload): capped.
CAPPED_ENDPOINTS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
BUFFERED_BODIES = 8  # capped bodies held at once, counted in bytes: 8 × 32 MiB by default
BODY_DEADLINE_S = 120.0  # a capped body must arrive within this, or its memory would be held at the client's pace
BUSY_RETRY_AFTER_S = 1
SMALL_BODY = 64 * 1024  # read_small's limit


@dataclass(frozen=True)
class Refusal:
    """An Ollama-shaped error answer: status and {"error": message}."""

    status: int
    message: str
    retry_after: int | None = None


class BodyBudget:
    """Bytes of capped bodies held right now, against a limit shared by all requests."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0

    def take(self, nbytes: int) -> bool:
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        self.peak = max(self.peak, self.used)
        return True

    def give(self, nbytes: int) -> None:
        self.used = max(0, self.used - nbytes)


class HeldBody:
    """A capped body read whole, with its share of the budget until release() (called once it is sent)."""

    def __init__(self, raw: bytearray, budget: BodyBudget):
        self.raw: bytearray | None = raw
        self.size = len(raw)
        self._budget = budget
        self._held = len(raw)

    def release(self) -> None:
        self.raw = None
        self._budget.give(self._held)
        self._held = 0

    async def stream(self) -> AsyncIterator[memoryview]:
        """The body for the upstream request (one chunk, not copied); memory and budget go once it is sent."""
        raw, self.raw = self.raw, None
        if raw:
            yield memoryview(raw)
        del raw
        self.release()


def too_large(cap: int, what: str) -> Refusal:
    return Refusal(413, f"memwarden proxy: request body {what} over the {format_size(cap)} limit "
                        "(proxy.max_request_body)")


async def read_small(reader: asyncio.StreamReader, length: int, cap: int, budget: BodyBudget,
                     deadline_s: float = BODY_DEADLINE_S) -> HeldBody | Refusal:
    """A capped body of a known Content-Length up to SMALL_BODY, read in one call (the common case: a prompt).
    Its budget is taken before it arrives, which a client that only announces it can hold at most SMALL_BODY of;
    a larger body goes through read_capped, counted as it arrives.
    asyncio.IncompleteReadError (the client went away) gives it back and propagates."""
    assert length <= SMALL_BODY
    if length > cap:
        return too_large(cap, f"of {format_size(length)} is")
    if not budget.take(length):
        return Refusal(503, "memwarden proxy: busy: too many large request bodies in flight "
                            f"({format_size(budget.used)}); try again", BUSY_RETRY_AFTER_S)
    try:
        async with asyncio.timeout(deadline_s):
            raw = bytearray(await reader.readexactly(length))
    except TimeoutError:
        budget.give(length)
        return Refusal(408, f"memwarden proxy: request body not received within {deadline_s:g}s")
    except BaseException:
        budget.give(length)
        raise
    return HeldBody(raw, budget)


async def read_capped(content: Any, declared: int | None, cap: int, budget: BodyBudget,
                      deadline_s: float = BODY_DEADLINE_S) -> HeldBody | Refusal:
    """Read a capped body from `content` (an aiohttp StreamReader): the body, or the refusal to answer with.
    Nothing read is kept past a refusal."""
    if declared is not None and declared > cap:
        return too_large(cap, f"of {format_size(declared)} is")
    raw = bytearray()
    refusal: Refusal | None = None
    try:
        async with asyncio.timeout(deadline_s):
            async for chunk in content.iter_any():
                if len(raw) + len(chunk) > cap:
                    refusal = too_large(cap, "is")
                    break
                if not budget.take(len(chunk)):
                    refusal = Refusal(503, "memwarden proxy: busy: too many large request bodies in flight "
                                           f"({format_size(budget.used)}); try again", BUSY_RETRY_AFTER_S)
                    break
                raw += chunk
    except TimeoutError:
        refusal = Refusal(408, f"memwarden proxy: request body not received within {deadline_s:g}s")
    except BaseException:  # the client went away mid-body: give back what it held, let the caller say so
        budget.give(len(raw))
        raise
    if refusal is not None:
        budget.give(len(raw))
        return refusal
    return HeldBody(raw, budget)
