"""/api/generate and /api/chat: loads, unloads (keep_alive 0), and canned answers, streamed or whole."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any

from aiohttp import web

from .bodies import (
    NDJSON,
    BadRequest,
    NDJSONStream,
    error,
    field,
    keep_alive_of,
    note,
    read_body,
    send_json,
    write_line,
)
from .goformat import rfc3339
from .models import Registry
from .runners import Busy, LoadError, Runner, Settings
from .scheduler import Scheduler


class CompletionRoutes:
    settings: Settings
    registry: Registry
    sched: Scheduler

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        struct = "ChatRequest" if chat else "GenerateRequest"
        body = await read_body(request, struct)
        note(request, body)
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
                return await send_json(request, empty_answer("unload"))
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
                return await send_json(request, empty_answer("load"))
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
            resp = NDJSONStream(headers={"Content-Type": NDJSON})
            await resp.prepare(request)
        async with runner.slots:  # OLLAMA_NUM_PARALLEL requests at a time per runner
            t_eval = time.monotonic_ns()
            prompt_eval_ns = 1_000 * prompt_tokens
            for word in words:
                if not runner.alive:
                    msg = "an error was encountered while running the model: unexpected EOF"
                    if resp is None:
                        return error(500, msg)
                    await write_line(resp, {"error": msg})
                    await resp.write_eof()
                    return resp
                if resp is not None:
                    chunk = head()
                    if chat:
                        chunk["message"] = {"role": "assistant", "content": word}
                    else:
                        chunk["response"] = word
                    chunk["done"] = False
                    if not await write_line(resp, chunk):
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
            return await send_json(request, final)
        if await write_line(resp, final):
            await resp.write_eof()
        return resp
