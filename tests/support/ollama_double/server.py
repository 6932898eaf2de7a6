"""The HTTP side: Ollama's routes (server/routes.go) on aiohttp, plus test hooks under /_double/."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from memwarden.gpu import simfile

from .goformat import DurationError, normalize_name, parse_keep_alive, rfc3339
from .models import Registry, parse_digest
from .scheduler import Busy, LoadError, Runner, Scheduler, Settings

log = logging.getLogger("ollama_double")
VERSION = "0.12.6"
NDJSON = "application/x-ndjson"
_GO_TYPES = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object",
             type(None): "null"}


class BadRequest(Exception):
    pass


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _go_type(value: Any) -> str:
    return _GO_TYPES.get(type(value), "value")


async def read_body(request: web.Request, struct: str) -> dict[str, Any]:
    """c.ShouldBindJSON: an empty body is "missing request body"; bad JSON and wrong shapes say why (400)."""
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid character at offset {getattr(exc, 'pos', 0)}: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"json: cannot unmarshal {_go_type(body)} into Go value of type api.{struct}")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], struct: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        want = _GO_TYPES.get(kinds[0], "value")
        raise BadRequest(f"json: cannot unmarshal {_go_type(value)} into Go struct field {struct}.{name} "
                         f"of type {want}")
    return value


def keep_alive_of(body: dict[str, Any]) -> int | None:
    if body.get("keep_alive") is None:
        return None
    try:
        return parse_keep_alive(body["keep_alive"])
    except DurationError as exc:
        raise BadRequest(str(exc)) from None


class Double:
    def __init__(self, settings: Settings, registry: Registry, sim_file: Path, gpu: int):
        self.settings = settings
        self.registry = registry
        self.sched = Scheduler(settings, registry, sim_file, gpu)
        self.sim_file = sim_file
        self.gpu = gpu
        self.requests: list[dict[str, Any]] = []
        self.started = time.time()

    # ---- plumbing ----
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
        r.add_get("/_double/state", self.double_state)
        r.add_post("/_double/config", self.double_config)
        r.add_post("/_double/clear", self.double_clear)
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        entry: dict[str, Any] | None = None
        if request.path.startswith("/api/"):
            entry = {"t": time.time(), "method": request.method, "endpoint": request.path, "model": None,
                     "keep_alive": None, "keep_alive_given": False, "status": None}
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

    def note(self, request: web.Request, body: dict[str, Any]) -> None:
        entry = request.get("record")
        if entry is None:
            return
        model = body.get("model") if body.get("model") is not None else body.get("name")
        entry["model"] = model if isinstance(model, str) else None
        if "keep_alive" in body:
            entry["keep_alive"] = body["keep_alive"]
            entry["keep_alive_given"] = body["keep_alive"] is not None

    @staticmethod
    async def send_json(request: web.Request, obj: Any, status: int = 200) -> web.StreamResponse:
        """Write the whole answer now, so that whatever the handler does next happens AFTER the client has it."""
        resp = web.json_response(obj, status=status)
        await resp.prepare(request)
        await resp.write_eof()
        return resp

    # ---- simple routes ----
    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.registry.tags()})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.sched.ps()})

    async def show(self, request: web.Request) -> web.Response:
        body = await read_body(request, "ShowRequest")
        self.note(request, body)
        name = field(body, "model", str, "ShowRequest") or field(body, "name", str, "ShowRequest")
        if not name:
            return error(400, "model is required")
        spec = self.registry.get(name)
        if spec is None:
            return error(404, f"model '{name}' not found")
        return web.json_response(self.registry.show(spec))

    # ---- generate / chat ----
    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        struct = "ChatRequest" if chat else "GenerateRequest"
        body = await read_body(request, struct)
        self.note(request, body)
        model = field(body, "model", str, struct, "")
        keep_alive = keep_alive_of(body)
        stream = field(body, "stream", bool, struct, True)
        options = field(body, "options", dict, struct, {})
        if chat:
            messages = field(body, "messages", list, struct, [])
            if not all(isinstance(m, dict) for m in messages):
                raise BadRequest(f"json: cannot unmarshal array into Go struct field {struct}.messages")
            prompt = " ".join(str(m.get("content") or "") for m in messages)
            empty = not messages
        else:
            prompt = field(body, "prompt", str, struct, "")
            empty = prompt == ""
        num_ctx = options.get("num_ctx") if isinstance(options.get("num_ctx"), int) else None
        if not model:
            return error(400, "model is required")
        spec = self.registry.get(model)
        if spec is None:
            return error(404, f"model '{model}' not found")

        def head() -> dict[str, Any]:
            return {"model": model, "created_at": rfc3339(utc=True)}

        def empty_answer(reason: str) -> dict[str, Any]:
            out = head()
            if chat:
                out["message"] = {"role": "assistant", "content": ""}
            else:
                out["response"] = ""
            return {**out, "done_reason": reason, "done": True}

        if empty and keep_alive == 0:
            # expireRunner: answered at once; the unload starts after the answer, once in-flight requests end.
            try:
                return await self.send_json(request, empty_answer("unload"))
            finally:
                self.sched.expire(spec.name)
        try:
            runner, load_ns = await self.sched.acquire(spec, keep_alive, num_ctx)
        except Busy as exc:
            return error(503, str(exc))
        except LoadError as exc:
            return error(500, str(exc))
        try:
            if empty:
                return await self.send_json(request, empty_answer("load"))
            return await self._answer(request, runner, chat, stream, prompt, options, head, t0, load_ns)
        finally:
            self.sched.release(runner)

    async def _answer(self, request: web.Request, runner: Runner, chat: bool, stream: bool, prompt: str,
                      options: dict[str, Any], head: Any, t0: int, load_ns: int) -> web.StreamResponse:
        words = re.findall(r"\s*\S+", self.settings.response) or ["…"]
        limit = options.get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(words):
            words, reason = words[:limit], "length"
        prompt_tokens = max(1, len(prompt.split()))
        resp: web.StreamResponse | None = None
        if stream:
            resp = web.StreamResponse(headers={"Content-Type": NDJSON})
            await resp.prepare(request)
        async with runner.slots:  # OLLAMA_NUM_PARALLEL requests at a time per runner
            t_eval = time.monotonic_ns()
            prompt_eval_ns = 1_000 * prompt_tokens
            for word in words:
                if not runner.alive:
                    msg = "an error was encountered while running the model: unexpected EOF"
                    if resp is None:
                        return error(500, msg)
                    await self._write(resp, {"error": msg})
                    await resp.write_eof()
                    return resp
                if resp is not None:
                    chunk = head()
                    if chat:
                        chunk["message"] = {"role": "assistant", "content": word}
                    else:
                        chunk["response"] = word
                    chunk["done"] = False
                    if not await self._write(resp, chunk):
                        return resp
                if self.settings.chunk_delay > 0:
                    await asyncio.sleep(self.settings.chunk_delay)
            eval_ns = max(1, time.monotonic_ns() - t_eval)
        final = head()
        text = "".join(words)
        if chat:
            final["message"] = {"role": "assistant", "content": "" if stream else text}
        else:
            final["response"] = "" if stream else text
        final["done"] = True
        final["done_reason"] = reason
        if not chat:
            final["context"] = [int(hashlib.sha256(w.encode()).hexdigest()[:4], 16)
                                for w in prompt.split() + [w.strip() for w in words]]
        final.update(total_duration=time.monotonic_ns() - t0, load_duration=load_ns,
                     prompt_eval_count=prompt_tokens, prompt_eval_duration=prompt_eval_ns,
                     eval_count=len(words), eval_duration=eval_ns)
        if resp is None:
            return await self.send_json(request, final)
        if await self._write(resp, final):
            await resp.write_eof()
        return resp

    @staticmethod
    async def _write(resp: web.StreamResponse, obj: Any) -> bool:
        try:
            await resp.write(json.dumps(obj).encode() + b"\n")
            return True
        except (ConnectionError, RuntimeError):  # the client went away (Ollama: 499)
            return False

    # ---- blobs, create, copy, delete ----
    async def head_blob(self, request: web.Request) -> web.Response:
        digest = parse_digest(request.match_info["digest"])
        if digest is None:
            return error(400, "invalid digest format")
        return web.Response(status=200 if self.registry.has_blob(digest) else 404)

    async def post_blob(self, request: web.Request) -> web.Response:
        digest = parse_digest(request.match_info["digest"])
        if digest is None:
            return error(400, "invalid digest format")
        if self.registry.has_blob(digest):
            await request.read()
            return web.Response(status=200)
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.registry.blobs_dir, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
            got = h.hexdigest()
            if got != digest:
                return error(400, f'digest mismatch, expected "sha256:{digest}", got "sha256:{got}"')
            os.replace(tmp, self.registry.blob_path(digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return web.Response(status=201)

    async def create(self, request: web.Request) -> web.StreamResponse:
        struct = "CreateRequest"
        body = await read_body(request, struct)
        self.note(request, body)
        name = field(body, "model", str, struct, "") or field(body, "name", str, struct, "")
        base_name = field(body, "from", str, struct, "")
        adapters = field(body, "adapters", dict, struct, {})
        files = field(body, "files", dict, struct, {})
        stream = field(body, "stream", bool, struct, True)
        quantize = field(body, "quantize", str, struct, "")
        if not name:
            return error(400, "model is required")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*(:[A-Za-z0-9_][A-Za-z0-9_.\-]*)?", name):
            return error(400, "invalid model name")
        if not base_name and not files:
            return error(400, "neither 'from' or 'files' was specified")
        base = None
        if base_name:
            base = self.registry.get(base_name)
            if base is None:
                return error(404, f"model '{base_name}' not found")
        # One adapter may come as several files (a safetensors adapter is its weights plus adapter_config.json,
        # which Ollama's converter reads): what counts is the weights files.
        if sum(1 for f in adapters if not f.endswith(".json")) > 1:
            return error(400, "only one adapter is currently supported")
        statuses = []
        for kind, mapping in (("files", files), ("adapters", adapters)):
            for fname, digest_text in mapping.items():
                digest = parse_digest(digest_text) if isinstance(digest_text, str) else None
                if digest is None:
                    return error(400, f"invalid digest for {kind} {fname!r}")
                if not self.registry.has_blob(digest):
                    return error(400, f"missing blob sha256:{digest} for {fname!r}: upload it first "
                                      "with POST /api/blobs/sha256:<digest>")
        if quantize and base is not None and base.quantization_level.upper() not in ("F16", "F32", "BF16"):
            return error(400, "quantization is only supported for F16 and F32 models")
        if base is not None:
            statuses.append(f"using existing layer sha256:{base.weights_digest}")
        file_digests = [f"sha256:{parse_digest(d)}" for d in files.values()]
        adapter_digests = [f"sha256:{parse_digest(d)}" for d in adapters.values()]
        if not base and file_digests:
            statuses.append("parsing GGUF")
        statuses += [f"using existing layer {d}" for d in file_digests + adapter_digests]
        spec = self.registry.create(normalize_name(name), base, adapter_digests, file_digests, body)
        if any(k in body for k in ("system", "template", "parameters", "license")):
            statuses.append(f"creating new layer sha256:{hashlib.sha256(spec.digest.encode()).hexdigest()}")
        statuses += ["writing manifest", "success"]
        if not stream:
            return web.json_response({"status": "success"})
        resp = web.StreamResponse(headers={"Content-Type": NDJSON})
        await resp.prepare(request)
        for status in statuses:
            await self._write(resp, {"status": status})
        await resp.write_eof()
        return resp

    async def copy(self, request: web.Request) -> web.Response:
        body = await read_body(request, "CopyRequest")
        source = field(body, "source", str, "CopyRequest", "")
        dest = field(body, "destination", str, "CopyRequest", "")
        spec = self.registry.get(source)
        if spec is None:
            return error(404, f"model '{source}' not found")
        if not dest:
            return error(400, "destination is required")
        self.registry.copy(spec, dest)
        return web.Response(status=200)

    async def delete(self, request: web.Request) -> web.Response:
        body = await read_body(request, "DeleteRequest")
        self.note(request, body)
        name = field(body, "model", str, "DeleteRequest", "") or field(body, "name", str, "DeleteRequest", "")
        if not name:
            return error(400, "model is required")
        if not self.registry.delete(name):
            return error(404, f"model '{name}' not found")
        return web.Response(status=200)

    # ---- test hooks ----
    async def double_state(self, request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid(), "version": VERSION, "uptime": time.time() - self.started,
                                  "settings": self.settings.public(), "sim_file": str(self.sim_file),
                                  "gpu": self.gpu, "requests": self.requests, **self.sched.state()})

    async def double_config(self, request: web.Request) -> web.Response:
        body = await read_body(request, "DoubleConfig")
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

    async def double_clear(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.sched.events.clear()
        return web.json_response({})


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: graceful stop


async def serve(double: Double, host: str, port: int, exit_with_parent: bool = False) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    if exit_with_parent:
        _die_with_parent()
        if os.getppid() != parent:
            return 0
    runner = web.AppRunner(double.app(), access_log=None, handle_signals=False)
    await runner.setup()
    sock = _bind(host, port)
    site = web.SockSite(runner, sock, shutdown_timeout=1.0)
    await site.start()
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    print(f"listening on http://{shown}:{bound[1]}", flush=True)
    log.info("serving %d models on GPU %d of %s; settings %s", len(double.registry.models), double.gpu,
             double.sim_file, double.settings.public())
    await stop.wait()
    log.info("shutting down: killing %d runners", len(double.sched.processes))
    await double.sched.shutdown()
    await runner.cleanup()
    return 0


def check_gpu(sim_file: Path, gpu: int) -> None:
    data = simfile.read(sim_file)
    if not any(g["index"] == gpu for g in data["gpus"]):
        raise simfile.SimFileError(f"{sim_file}: no GPU with index {gpu}")


def setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s ollama-double[%(process)d] %(levelname)s %(message)s")
