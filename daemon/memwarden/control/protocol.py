"""JSON-RPC 2.0 framing: one UTF-8 JSON object per line; requests of at most MAX_LINE bytes, replies of at most
MAX_REPLY bytes."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_LINE = 1024 * 1024
# Replies may be longer than requests (one memory alone holds up to 400,000 characters, six bytes each once
# escaped); every listing is paged well under this, so a reply this long is a bug the server refuses to send.
MAX_REPLY = 32 * 1024 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application errors (the -32000..-32099 range is the server's to define).
APPLICATION_ERROR = -32000
PERMISSION_DENIED = -32001
LINE_TOO_LONG = -32002
BUSY = -32003

_NO_ID = object()


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class ApplicationError(RpcError):
    """A method could not do what was asked; the message tells the user why."""

    def __init__(self, message: str, data: Any = None, code: int = APPLICATION_ERROR):
        super().__init__(code, message, data)


@contextlib.contextmanager
def refusals(*kinds: type[Exception]) -> Iterator[None]:
    """A part's expected refusals (`kinds`: ArbiterError, OllamaError, …) reach the caller as an application
    error in the part's own words; anything else escapes, and the server answers it as an internal error."""
    try:
        yield
    except kinds as exc:
        raise ApplicationError(str(exc)) from None


class InvalidParams(RpcError):
    def __init__(self, message: str):
        super().__init__(INVALID_PARAMS, f"invalid params: {message}")


@dataclass(frozen=True)
class Request:
    method: str
    params: dict[str, Any]
    id: Any  # _NO_ID for a notification, which gets no response

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID


def parse_request(line: bytes) -> Request:
    """A Request, or RpcError carrying the id when one could be read (in .data['id'])."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RpcError(PARSE_ERROR, f"parse error: {exc}") from None
    except RecursionError:
        # A line of 5000 '[' is valid JSON to a grammar and a RecursionError to json.loads.
        raise RpcError(PARSE_ERROR, "parse error: nested too deeply") from None
    except ValueError:
        # The one ValueError json.loads lets out: Python refuses integers of more than
        # sys.get_int_max_str_digits() digits.
        raise RpcError(PARSE_ERROR, f"parse error: a number has more than {sys.get_int_max_str_digits():,} "
                                    "digits") from None
    if isinstance(obj, list):
        raise RpcError(INVALID_REQUEST, "invalid request: batches are not supported; send one object per line")
    if not isinstance(obj, dict):
        raise RpcError(INVALID_REQUEST, f"invalid request: expected a JSON object, got {type(obj).__name__}")
    req_id = obj.get("id", _NO_ID)
    valid_id = req_id is None or (isinstance(req_id, str | int) and not isinstance(req_id, bool))
    if req_id is not _NO_ID and not valid_id:
        raise RpcError(INVALID_REQUEST, "invalid request: 'id' must be a string, a number or null")
    ident = None if req_id is _NO_ID else req_id

    def bad(message: str) -> RpcError:
        return RpcError(INVALID_REQUEST, f"invalid request: {message}", {"id": ident})

    if obj.get("jsonrpc") != "2.0":
        raise bad("'jsonrpc' must be \"2.0\"")
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise bad("'method' must be a non-empty string")
    params = obj.get("params", {})
    if isinstance(params, list):
        if params:
            raise RpcError(INVALID_PARAMS, "invalid params: pass params by name (an object), not a list",
                           {"id": ident})
        params = {}
    if not isinstance(params, dict):
        raise bad("'params' must be an object")
    extra = set(obj) - {"jsonrpc", "method", "params", "id"}
    if extra:
        raise bad(f"unexpected member(s) {sorted(extra)}")
    return Request(method, params, req_id)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str, allow_nan=False).encode() + b"\n"


@dataclass(frozen=True)
class Encoded:
    """A result already encoded as JSON (by a method that encodes large results off the event loop)."""
    json: bytes


def result_line(req_id: Any, result: Any) -> bytes:
    if isinstance(result, Encoded):
        head = encode({"jsonrpc": "2.0", "id": req_id, "result": None})
        return b"".join((head[:-len(b"null}\n")], result.json, b"}\n"))
    return encode({"jsonrpc": "2.0", "id": req_id, "result": result})


def error_line(req_id: Any, err: RpcError) -> bytes:
    return encode({"jsonrpc": "2.0", "id": req_id, "error": err.to_dict()})


def request_line(method: str, params: dict[str, Any] | None = None, req_id: Any = 1) -> bytes:
    obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
    if params:
        obj["params"] = params
    return encode(obj)
