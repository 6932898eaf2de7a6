"""A bounded queue with one worker: a slow sink never blocks the loop, and a flood drops the oldest."""

from __future__ import annotations

import asyncio
from typing import Any

from memwarden.logs import get_logger

log = get_logger()


class QueuedSink:
    name = "sink"

    def __init__(self, maxsize: int = 256):
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self._task: asyncio.Task | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, event: dict[str, Any]) -> None:
        if self._queue.full():
            lost = self._queue.get_nowait()
            self.dropped += 1
            log.warning("alert sink queue full; dropping the oldest event", sink=self.name,
                        dropped_kind=lost.get("kind"), dropped_event=lost.get("event"))
        self._queue.put_nowait(event)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._work(), name=f"sink-{self.name}")

    async def _work(self) -> None:
        while not self._queue.empty():
            event = self._queue.get_nowait()
            try:
                ok = await self.deliver(event)
            except Exception as exc:  # noqa: BLE001 - a sink bug must not end the worker
                log.error("alert sink failed", sink=self.name, error=repr(exc))
                ok = False
            if ok:
                self.delivered += 1
            else:
                self.failed += 1
            self._queue.task_done()

    async def deliver(self, event: dict[str, Any]) -> bool:
        raise NotImplementedError

    async def drain(self, timeout: float) -> None:
        """Wait for queued events (used on shutdown), at most `timeout` seconds."""
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("alert sink did not drain before shutdown", sink=self.name,
                            pending=self._queue.qsize())

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
