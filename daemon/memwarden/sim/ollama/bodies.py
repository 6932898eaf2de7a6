"""Reading Ollama's request bodies as gin's c.ShouldBindJSON does (Go's error texts), and writing answers."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .goformat import DurationError, parse_keep_alive

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



def note(request: web.Request, body: dict[str, Any]) -> None:
    """Fill in the request's record (see the middleware) with the model and keep_alive it asked for."""
    entry = request.get("record")
    if entry is None:
        return
    model = body.get("model") if body.get("model") is not None else body.get("name")
    entry["model"] = model if isinstance(model, str) else None
    if "keep_alive" in body:
        entry["keep_alive"] = body["keep_alive"]
        entry["keep_alive_given"] = body["keep_alive"] is not None


class NDJSONStream(web.StreamResponse):
    """A streamed answer whose head leaves with its first line, as Ollama's does (Go's net/http holds a head
    until the handler's first flush, and Ollama flushes after each line): a client reads both in one piece."""

    _send_headers_immediately = False  # aiohttp's own switch, set by web.Response, for a head sent with the body


async def send_json(request: web.Request, obj: Any, status: int = 200) -> web.StreamResponse:
    """Write the whole answer now, so that whatever the handler does next happens AFTER the client has it."""
    resp = web.json_response(obj, status=status)
    await resp.prepare(request)
    await resp.write_eof()
    return resp


async def write_line(resp: web.StreamResponse, obj: Any) -> bool:
    """One NDJSON line; False when the client went away (Ollama: 499)."""
    try:
        await resp.write(json.dumps(obj).encode() + b"\n")
        return True
    except (ConnectionError, RuntimeError):
        return False
