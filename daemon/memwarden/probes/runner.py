"""Run one probe per sample pass: in its own thread (or as a coroutine), single-flight, with a time-out.

A probe that raises is *degraded* (its error is reported, the pass goes on). A probe whose call outlives its
time-out is *hung*: it is not called again while the call is stuck, and the daemon stops feeding the systemd
watchdog so that a call stuck in the kernel (NVML, Docker) gets the daemon restarted.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from memwarden.logs import get_logger

log = get_logger()


class ProbeRunner:
    def __init__(self, probe: Any, timeout: float, optional: bool = False):
        self.probe = probe
        # An optional probe reads something that may well not exist here (an Ollama nobody configured, at its
        # default address): it is degraded only once it has answered at least once, then lost it.
        self.optional = optional
        self.name: str = probe.name
        self.timeout = timeout
        self.error: str | None = None
        self.hung_since: float | None = None
        self.last: Any = None
        self.last_ok_at: float | None = None
        self._pending: asyncio.Future | None = None
        self._started = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._is_async = inspect.iscoroutinefunction(probe.read)

    @property
    def degraded(self) -> bool:
        return self.error is not None and not self.absent

    @property
    def absent(self) -> bool:
        """An optional probe that never answered: nothing is there, which is no fault."""
        return self.optional and self.last_ok_at is None

    def _start(self) -> asyncio.Future:
        if self._is_async:
            return asyncio.ensure_future(self.probe.read())
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"probe-{self.name}")
        return asyncio.get_running_loop().run_in_executor(self._executor, self.probe.read)

    async def sample(self) -> Any:
        """The new snapshot, or None when the probe failed or is still stuck in an earlier call.

        Callers that arrive while a read is in flight (a sample pass and a lease confirming free VRAM) share
        that read rather than starting another.
        """
        if self._pending is not None and not self._pending.done():
            if self.hung_since is not None:
                self._fail(f"{self.name} probe call stuck for more than {self.timeout:g}s")
                return None
            pending, started = self._pending, self._started
        else:
            pending = self._pending = self._start()
            started = self._started = time.monotonic()
        try:
            remaining = max(0.0, self.timeout - (time.monotonic() - started))
            snapshot = await asyncio.wait_for(asyncio.shield(pending), remaining)
        except TimeoutError:
            self.hung_since = started
            self._fail(f"{self.name} probe call stuck for more than {self.timeout:g}s")
            return None
        except Exception as exc:  # noqa: BLE001 - a probe error is a degraded state, never a crash
            self._fail(str(exc) or repr(exc))
            return None
        self.hung_since = None
        if self.absent:
            log.info("the probe answers; it is degraded if it stops", probe=self.name)
        elif self.error is not None:
            log.info("probe recovered", probe=self.name, after_error=self.error)
        self.error = None
        self.last = snapshot
        self.last_ok_at = time.time()
        return snapshot

    def _fail(self, error: str) -> None:
        if self.absent:
            if self.error is None:
                log.info("nothing answers the probe; going on without it", probe=self.name, error=error)
        elif error != self.error:
            log.error("probe degraded", probe=self.name, error=error)
        self.error = error

    @property
    def hung(self) -> bool:
        return self.hung_since is not None and self._pending is not None and not self._pending.done()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
