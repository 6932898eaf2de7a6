"""The daemon: one asyncio loop, its signals, the front doors, and the sample passes on its monotonic clock.

services.build() makes the parts over the state database; the Daemon opens that database, starts the front
doors (control socket, Ollama proxy, metrics endpoint) over the parts, runs a sample pass (sample_pass.py)
every interval, reloads on SIGHUP and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from memwarden import __version__
from memwarden.config import Config
from memwarden.config.redact import remember, secret_values
from memwarden.control.admission import ClientLimits
from memwarden.control.methods import register_all
from memwarden.control.registry import Registry
from memwarden.control.server import ControlServer, bind_unix
from memwarden.logs import get_logger
from memwarden.reload import reload_config
from memwarden.sample_pass import SamplePass
from memwarden.services import Services, build
from memwarden.state.db import open_state
from memwarden.sysd.activation import listen_fds, unix_listener

log = get_logger()

HOUSEKEEPING_INTERVAL = 3600.0  # seconds between two prunes of the alert history


class Daemon:
    def __init__(self, config: Config, config_arg: Path | None = None, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 **parts: Any):
        """`parts`: what services.build() may be given instead of making it (probes, the restarter)."""
        self.config = config
        self.config_arg = config_arg
        self.env = os.environ if env is None else env
        self.clock = clock
        self.wall = wall
        self.parts = parts
        self.services: Services | None = None
        self.server: ControlServer | None = None
        self.proxy: Any = None  # memwarden.proxy.server.OllamaProxy, imported only when enabled
        self.metrics: Any = None  # memwarden.metrics.server.MetricsServer, imported only when enabled
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._sampler: asyncio.Task | None = None
        self._rescheduled = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        cfg = self.config
        remember(secret_values(cfg))
        s = self.services = build(cfg, open_state(cfg.daemon.state_dir), env=self.env, clock=self.clock,
                                  wall=self.wall, **self.parts)
        await s.start()
        registry = Registry()
        register_all(registry, s, self.reload)
        self.server = ControlServer(registry, cfg.daemon.admin_group, ClientLimits.of(cfg.daemon),
                                    on_state_error=s.state.failed)
        activated = unix_listener(listen_fds())
        if activated is not None:
            await self.server.start(activated, owned_path=None)
            socket_desc = f"fd {activated.fileno()} (socket activation)"
        else:
            await self.server.start(bind_unix(cfg.daemon.socket, cfg.daemon.socket_group), cfg.daemon.socket)
            socket_desc = str(cfg.daemon.socket)
        s.server = self.server
        if cfg.proxy.enabled:
            from memwarden.proxy.server import OllamaProxy

            self.proxy = OllamaProxy(s.arbiter, cfg.proxy, cfg.proxy.upstream or cfg.ollama.url)
            await self.proxy.start()
            s.proxy = self.proxy
        if cfg.metrics.enabled:
            from memwarden.metrics.server import MetricsServer

            # A port in use is no reason to stop guarding the machine: the pass retries it and alerts meanwhile.
            self.metrics = MetricsServer(s, cfg.metrics.listen)
            await self.metrics.start()
        interval = s.effective_interval()
        log.info("memwardend starting", version=__version__, pid=os.getpid(),
                 config=str(cfg.source or "embedded defaults"), socket=socket_desc,
                 state_dir=str(cfg.daemon.state_dir), sample_interval_s=interval, dry_run=cfg.daemon.dry_run,
                 watchdog_usec=s.notifier.watchdog_usec, gpu_backend=s.gpu_backend,
                 ollama=cfg.ollama.url or None, leases=len(s.arbiter.leases))
        passes = SamplePass(s, self.metrics.check if self.metrics is not None else None)
        self._sampler = loop.create_task(self._sample_loop(passes), name="sample passes")
        await self._stop.wait()
        await self.shutdown()
        return 0

    def request_stop(self, why: str = "request") -> None:
        if not self._stop.is_set():
            log.info("memwardend stopping", reason=why)
            if self.services is not None:
                self.services.notifier.stopping()
            self._stop.set()

    async def shutdown(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        for door in (self.server, self.proxy, self.metrics):
            if door is not None:
                await door.close()
        s = self.services
        if s is not None:
            await s.close()
            log.info("memwardend stopped", uptime_s=round(s.readings.uptime(), 1))

    async def _sample_loop(self, passes: SamplePass) -> None:
        """A sample pass every effective_interval() and housekeeping every hour, timed by the event loop's
        monotonic clock, so a step of the wall clock neither stops the passes (and the watchdog) nor bursts
        them. A pass that overruns is followed at once by the next, never by a burst."""
        assert self.services is not None
        s = self.services
        loop = asyncio.get_running_loop()
        due = loop.time()
        housekeeping_due = due + HOUSEKEEPING_INTERVAL
        while True:
            try:
                await passes.run()
                if loop.time() >= housekeeping_due:
                    housekeeping_due = loop.time() + HOUSEKEEPING_INTERVAL
                    await passes.component("housekeeping", passes.housekeeping)
            except Exception:
                log.exception("sample pass failed")
            due = max(due + s.effective_interval(), loop.time())
            while (wait := due - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self._rescheduled.wait(), wait)
                except TimeoutError:
                    break
                self._rescheduled.clear()  # a reload changed the interval: the next pass is one new interval away
                due = loop.time() + s.effective_interval()

    async def reload(self, trigger: str) -> dict[str, Any]:
        assert self.services is not None
        async with self._reload_lock:
            result = await reload_config(self.services, self.config_arg, self.env, trigger)
            new = self.services.config
            if result["reloaded"]:
                if self.server is not None:
                    self.server.admin_group = new.daemon.admin_group
                    self.server.limits = ClientLimits.of(new.daemon)
                if self.proxy is not None:
                    self.proxy.cfg = new.proxy
                if new.daemon.sample_interval != self.config.daemon.sample_interval:
                    self._rescheduled.set()  # the next pass is one new interval away
                self.config = new
            return result
