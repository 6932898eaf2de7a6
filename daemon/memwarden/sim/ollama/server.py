"""The HTTP side: Ollama's routes (server/routes.go) on aiohttp, the simulator's own hooks under /_sim/, serving.

The routes live by what they touch: completion.py (generate, chat: the scheduler), library.py (tags, show, blobs,
create, copy, delete: the installed models); this module assembles them, records every /api/ request for the
hooks, and runs the server until SIGTERM or SIGINT, when it kills and unbooks every runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from .bodies import BadRequest, error, read_body
from .completion import CompletionRoutes
from .goformat import DurationError, parse_keep_alive
from .library import LibraryRoutes
from .models import Registry
from .scheduler import Scheduler, Settings

log = logging.getLogger("ollama_sim")
VERSION = "0.12.6"


class Simulator(CompletionRoutes, LibraryRoutes):
    def __init__(self, settings: Settings, registry: Registry, sim_file: Path, gpus: Sequence[int]):
        self.settings = settings
        self.registry = registry
        self.sched = Scheduler(settings, registry, sim_file, gpus)
        self.sim_file = sim_file
        self.gpus = list(gpus)
        self.requests: list[dict[str, Any]] = []
        self.started = time.time()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=1024**4)
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/api/version", self.version)
        r.add_get("/api/tags", self.tags)
        r.add_get("/api/ps", self.ps)
        r.add_post("/api/generate", self.generate)
        r.add_post("/api/chat", self.chat)
        r.add_post("/api/show", self.show)
        r.add_post("/api/create", self.create)
        r.add_post("/api/copy", self.copy)
        r.add_delete("/api/delete", self.delete)
        r.add_route("HEAD", "/api/blobs/{digest}", self.head_blob)
        r.add_post("/api/blobs/{digest}", self.post_blob)
        r.add_get("/_sim/state", self.sim_state)
        r.add_post("/_sim/config", self.sim_config)
        r.add_post("/_sim/clear", self.sim_clear)
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        entry: dict[str, Any] | None = None
        if request.path.startswith("/api/"):
            entry = {"t": time.time(), "method": request.method, "endpoint": request.path, "model": None,
                     "keep_alive": None, "keep_alive_given": False, "status": None,
                     "nodelay": _nodelay(request)}
            self.requests.append(entry)
            del self.requests[:-10000]
            request["record"] = entry
        try:
            resp = await handler(request)
        except BadRequest as exc:
            resp = error(400, str(exc))
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            resp = web.Response(status=404, text="404 page not found")  # gin's answer for any unknown route
        if entry is not None:
            entry["status"] = resp.status
        return resp

    # ---- simple routes ----
    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.sched.ps()})

    # ---- the simulator's hooks (not Ollama's API) ----
    async def sim_state(self, request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid(), "version": VERSION, "uptime": time.time() - self.started,
                                  "settings": self.settings.public(), "sim_file": str(self.sim_file),
                                  "gpus": self.gpus, "requests": self.requests, **self.sched.state()})

    async def sim_config(self, request: web.Request) -> web.Response:
        body = await read_body(request, "SimConfig")
        numeric = {"unload_linger", "load_seconds", "chunk_delay", "vram_recovery_timeout", "vram_poll_interval",
                   "vram_recovery_fraction"}
        whole = {"max_loaded", "max_queue", "num_parallel", "fail_loads"}
        for key, value in body.items():
            if key in numeric and isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                setattr(self.settings, key, float(value))
            elif key in whole and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self.settings, key, value)
            elif key == "hang_loads" and isinstance(value, bool):
                self.sched.set_hang(value)
            elif key == "response" and isinstance(value, str):
                self.settings.response = value
            elif key == "keep_alive":
                try:
                    self.settings.keep_alive_ns = parse_keep_alive(value)
                except DurationError as exc:
                    return error(400, f"keep_alive: {exc}")
            else:
                return error(400, f"unknown or invalid setting {key!r}: {value!r}")
        log.info("config %s", body)
        return web.json_response(self.settings.public())

    async def sim_clear(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.sched.events.clear()
        return web.json_response({})


def _nodelay(request: web.Request) -> bool | None:
    """Whether the request's connection sends without Nagle's delay, as Go's net/http sets on every one."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: graceful stop


async def _preload(sim: Simulator, names: Sequence[str]) -> str | None:
    """--load: each model loaded in order, as an empty-prompt /api/generate would; the first failure, in words."""
    for name in names:
        spec = sim.registry.get(name)
        if spec is None:
            return f"--load {name}: no such model"
        try:
            runner, _ = await sim.sched.acquire(spec, None, None)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported in one line
            return f"--load {name}: {exc}"
        sim.sched.release(runner)
    return None


async def serve(sim: Simulator, host: str, port: int, exit_with_parent: bool = False,
                preload: Sequence[str] = ()) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    if exit_with_parent:
        _die_with_parent()
        if os.getppid() != parent:
            return 0
    runner = web.AppRunner(sim.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        sock = _bind(host, port)
    except OSError as exc:
        print(f"ollama sim: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        await runner.cleanup()
        return 1
    site = web.SockSite(runner, sock, shutdown_timeout=1.0)
    await site.start()
    problem = await _preload(sim, preload)
    if problem is not None:
        print(f"ollama sim: {problem}", file=sys.stderr)
        await sim.sched.shutdown()
        await runner.cleanup()
        return 1
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    print(f"listening on http://{shown}:{bound[1]}", flush=True)
    log.info("serving %d models on GPUs %s of %s; settings %s", len(sim.registry.models), sim.gpus,
             sim.sim_file, sim.settings.public())
    await stop.wait()
    log.info("shutting down: killing %d runners", len(sim.sched.processes))
    await sim.sched.shutdown()
    await runner.cleanup()
    return 0


def setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s ollama-sim[%(process)d] %(levelname)s %(message)s")

