"""Ollama's scheduler (server/sched.go) as far as memory is concerned: runners, loads, keep_alive, eviction.

- One runner process per loaded model; loads are serialized (one lock) and take `load_seconds`.
- A loading model is already in the loaded set, so /api/ps lists it (expires_at = now + keep_alive), as Ollama does.
- keep_alive: the request's value replaces the runner's; absent keeps the runner's (a new load takes the default).
  The expiry timer runs only while the runner is idle; 0 unloads as soon as the last request finishes.
- A model goes whole on the GPU with the most free VRAM that fits it (gpus.py: free = total − bytes booked by live
  pids in the sim file, other processes included). When none fits, idle runners are evicted one at a time,
  shortest keep_alive first, then by name (not LRU), whatever their GPU, and after each eviction the sim file is
  polled every 250 ms for up to 5 s until 75 % of the victim's VRAM shows free. When nothing idle is left it loads
  partially on the roomiest GPU: size_vram = its free bytes (0 if none). At max_loaded it evicts in the same
  order, waiting for a runner to go idle if all are busy.
- Unloading: the model leaves the loaded set at once (so /api/ps stops listing it), but its runner stays alive,
  with its VRAM booked, for `unload_linger` seconds, then is killed and unbooked.
- A runner that dies on its own stays listed until the next request for its model, which reloads it (Ollama finds
  out by pinging the runner in needsReload); in-flight requests on it fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memwarden.gpu import simfile

from .goformat import FOREVER_NS, format_duration
from .gpus import SimGpus
from .models import ModelSpec, Registry
from .runners import Busy, LoadError, Runner, Settings, spawn_runner

log = logging.getLogger("ollama_sim")
__all__ = ["Busy", "LoadError", "Runner", "Scheduler", "Settings"]


class Scheduler:
    def __init__(self, settings: Settings, registry: Registry, sim_file: Path, gpus: Sequence[int]):
        self.settings = settings
        self.registry = registry
        self.gpus = SimGpus(sim_file, gpus)
        self.loaded: dict[str, Runner] = {}
        self.unloading: list[Runner] = []
        self.processes: set[Runner] = set()  # every runner with a process we have not reaped yet
        self.load_lock = asyncio.Lock()
        self.pending = 0
        self.loads_released = asyncio.Event()
        self.loads_released.set()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.closing = False
        self.counters = {"loads": 0, "partial_loads": 0, "load_failures": 0, "unloads": 0, "evictions": 0,
                         "expirations": 0, "reloads": 0, "runner_crashes": 0, "busy_rejections": 0,
                         "vram_recovery_timeouts": 0}
        self.events: list[dict[str, Any]] = []

    # ---- bookkeeping ----
    def event(self, kind: str, **fields: Any) -> None:
        entry = {"t": time.time(), "event": kind, **fields}
        self.events.append(entry)
        del self.events[:-5000]
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def set_hang(self, hang: bool) -> None:
        self.settings.hang_loads = hang
        if hang:
            self.loads_released.clear()
        else:
            self.loads_released.set()

    # ---- requests ----
    def lookup(self, name: str) -> Runner | None:
        return self.loaded.get(name)

    def _needs_reload(self, r: Runner, spec: ModelSpec, num_ctx: int) -> bool:
        if r.spec.load_identity() != spec.load_identity() or r.num_ctx != num_ctx:
            return True
        return r.state == "loaded" and not r.alive  # Ollama pings the runner

    def _use(self, r: Runner, keep_alive_ns: int | None) -> None:
        r.in_flight += 1
        r.cancel_timer()
        if keep_alive_ns is not None:
            r.keep_alive_ns = keep_alive_ns
        r.expires_ns = time.time_ns() + r.keep_alive_ns

    async def acquire(self, spec: ModelSpec, keep_alive_ns: int | None, num_ctx: int | None) -> tuple[Runner, int]:
        """A runner for `spec` with this request counted in flight; returns it and the load time (ns, 0 if warm)."""
        if self.pending >= self.settings.max_queue:
            self.counters["busy_rejections"] += 1
            raise Busy(Busy.MESSAGE)
        ctx = num_ctx or spec.context_length
        self.pending += 1
        try:
            # processPending: one pending request at a time, in arrival order. A request for a loaded model
            # waits behind a load ahead of it, so Ollama's own order swaps on every change of model.
            async with self.load_lock:
                while True:
                    r = self.loaded.get(spec.name)
                    if r is not None and not self._needs_reload(r, spec, ctx):
                        if r.state == "loading":
                            await r.ready.wait()
                            if r.error:
                                raise LoadError(r.error)
                            continue
                        self._use(r, keep_alive_ns)
                        return r, 0
                    if r is not None:
                        await self._retire(r)
                    started = time.monotonic_ns()
                    try:
                        r = await self._load(spec, keep_alive_ns, ctx)
                    except simfile.SimFileError as exc:
                        raise LoadError(f"reading the GPU's free memory: {exc}") from None
                    return r, time.monotonic_ns() - started
        finally:
            self.pending -= 1

    def release(self, r: Runner) -> None:
        r.in_flight -= 1
        self._notify()
        if r.in_flight > 0 or r.state != "loaded":
            return
        r.expires_ns = time.time_ns() + r.keep_alive_ns
        if r.keep_alive_ns == 0:
            self.begin_unload(r, "keep_alive 0")
        elif r.keep_alive_ns < FOREVER_NS:
            r.timer = asyncio.get_running_loop().call_later(r.keep_alive_ns / 1e9, self._expired, r)

    def _expired(self, r: Runner) -> None:
        r.timer = None
        if r.in_flight == 0 and r.state == "loaded":
            self.counters["expirations"] += 1
            self.begin_unload(r, "expired")

    def expire(self, name: str) -> Runner | None:
        """expireRunner: keep_alive 0 on an empty prompt. Unloads now if idle, else when the last request ends."""
        r = self.loaded.get(name)
        if r is None:
            return None
        r.cancel_timer()
        r.keep_alive_ns = 0
        r.expires_ns = time.time_ns()
        if r.in_flight == 0 and r.state == "loaded":
            self.begin_unload(r, "keep_alive 0")
        return r

    # ---- loading ----
    def _victim(self) -> Runner | None:
        idle = [r for r in self.loaded.values() if r.state == "loaded" and r.in_flight == 0]
        idle.sort(key=lambda r: (r.keep_alive_ns, r.spec.name))  # ByDurationAndName, not LRU
        return idle[0] if idle else None

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    async def _evict(self, victim: Runner) -> None:
        before = (await self.gpus.free())[victim.gpu]
        self.counters["evictions"] += 1
        self.begin_unload(victim, "evicted")
        await self._wait_vram_recovery(victim, before)

    async def _wait_vram_recovery(self, victim: Runner, free_before: int) -> None:
        def timed_out() -> None:
            self.counters["vram_recovery_timeouts"] += 1
            self.event("vram_recovery_timeout", model=victim.spec.name, pid=victim.pid, gpu=victim.gpu,
                       seconds=self.settings.vram_recovery_timeout)

        await self.gpus.wait_recovery(victim, free_before, self.settings, timed_out)

    async def _retire(self, r: Runner) -> None:
        """needsReload: wait for the runner's requests to finish, unload it, wait for its VRAM."""
        while r.state == "loaded" and r.in_flight > 0:
            await self._wait_changed()
        if r.state in ("loaded", "loading"):
            self.counters["reloads"] += 1
            before = (await self.gpus.free())[r.gpu]
            self.begin_unload(r, "reload")
            if r.alive:
                await self._wait_vram_recovery(r, before)

    async def _load(self, spec: ModelSpec, keep_alive_ns: int | None, num_ctx: int) -> Runner:
        s = self.settings
        keep = keep_alive_ns if keep_alive_ns is not None else s.keep_alive_ns
        while len(self.loaded) >= max(1, s.max_loaded):
            victim = self._victim()
            if victim is None:
                await self._wait_changed()
            else:
                await self._evict(victim)
        need = spec.size_vram
        while True:
            free = await self.gpus.free()
            gpu = self.gpus.place(free, need)
            if gpu is not None:
                size_vram = need
                break
            victim = self._victim()
            if victim is None:
                gpu = self.gpus.roomiest(free)
                size_vram = max(0, free[gpu])
                break
            await self._evict(victim)
        r = Runner(spec=spec, num_ctx=num_ctx, keep_alive_ns=keep, size_vram=size_vram,
                   slots=asyncio.Semaphore(max(1, s.num_parallel)), gpu=gpu, in_flight=1,
                   expires_ns=time.time_ns() + keep)
        self.loaded[spec.name] = r
        self.event("load_start", model=spec.name, size=spec.size, size_vram=size_vram, gpu=gpu, free=free[gpu],
                   keep_alive=format_duration(keep))
        try:
            await self._start_runner(r)
            await asyncio.sleep(s.load_seconds)
            await self.loads_released.wait()
            if s.fail_loads > 0:
                s.fail_loads -= 1
                raise LoadError("llama runner process has terminated: exit status 2")
            if not r.alive:
                raise LoadError(f"llama runner process has terminated: exit status {r.proc.returncode}")
        except BaseException as exc:
            r.error = str(exc) or type(exc).__name__
            self.counters["load_failures"] += 1
            self.event("load_failed", model=spec.name, error=r.error)
            if self.loaded.get(spec.name) is r:
                del self.loaded[spec.name]
            r.state = "exited"
            r.ready.set()
            await self._kill(r)
            self._notify()
            raise
        r.state = "loaded"
        r.loaded_at_ns = time.time_ns()
        self.counters["loads"] += 1
        if size_vram < spec.size_vram:
            self.counters["partial_loads"] += 1
        self.event("loaded", model=spec.name, pid=r.pid, size_vram=size_vram)
        r.ready.set()
        self._notify()
        return r

    async def _start_runner(self, r: Runner) -> None:
        if self.closing:
            raise LoadError("server shutting down")
        r.proc = await spawn_runner(r, self.registry)
        self.processes.add(r)
        self._spawn(self._watch(r))
        if r.size_vram > 0:
            await self.gpus.book(r.gpu, r.pid, r.size_vram)

    async def _watch(self, r: Runner) -> None:
        assert r.proc is not None
        rc = await r.proc.wait()
        r.exited.set()
        self.processes.discard(r)
        await self.gpus.unbook(r.pid)
        if r.state == "loaded" and not self.closing:
            self.counters["runner_crashes"] += 1
            self.event("runner_died", model=r.spec.name, pid=r.pid, returncode=rc)
        self._notify()

    # ---- unloading ----
    def begin_unload(self, r: Runner, reason: str) -> None:
        if r.state in ("unloading", "exited"):
            return
        if self.loaded.get(r.spec.name) is r:
            del self.loaded[r.spec.name]
        r.cancel_timer()
        r.state = "unloading"
        r.unload_reason = reason
        r.unload_started = time.monotonic()
        self.counters["unloads"] += 1
        self.unloading.append(r)
        linger = self.settings.unload_linger
        self.event("unload_start", model=r.spec.name, pid=r.pid, reason=reason, linger=linger)
        self._spawn(self._finish_unload(r, linger))
        self._notify()

    async def _finish_unload(self, r: Runner, linger: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(r.exited.wait(), linger)  # the runner holds its VRAM meanwhile
        await self._kill(r)
        r.state = "exited"
        if r in self.unloading:
            self.unloading.remove(r)
        self.event("unloaded", model=r.spec.name, pid=r.pid)
        self._notify()

    async def _kill(self, r: Runner) -> None:
        if r.proc is None:
            return
        if r.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                r.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.exited.wait(), 5)
        await self.gpus.unbook(r.pid)

    async def shutdown(self) -> None:
        """SIGTERM: kill every runner (loaded, loading, lingering) and unbook it."""
        self.closing = True
        for r in list(self.loaded.values()):
            r.cancel_timer()
        self.loads_released.set()
        runners = list(self.processes)
        for r in runners:
            if r.proc is not None and r.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.kill()
        for r in runners:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.exited.wait(), 5)
            await self.gpus.unbook(r.pid)
        for task in list(self._tasks):
            task.cancel()
        self.loaded.clear()
        self.unloading.clear()

    # ---- views ----
    def ps(self) -> list[dict[str, Any]]:
        out = []
        for r in sorted(self.loaded.values(), key=lambda r: (-r.expires_ns, r.spec.name)):
            spec = r.spec
            out.append({"name": spec.name, "model": spec.name, "size": spec.size, "digest": spec.digest,
                        "details": spec.details(), "expires_at": r.expires_at(), "size_vram": r.size_vram,
                        "context_length": r.num_ctx})
        return out

    def state(self) -> dict[str, Any]:
        return {"loaded": [r.describe() for r in sorted(self.loaded.values(), key=lambda r: r.spec.name)],
                "unloading": [r.describe() for r in self.unloading],
                "runner_pids": sorted(r.pid for r in self.processes if r.alive),
                "pending": self.pending, "counters": dict(self.counters), "events": list(self.events)}
