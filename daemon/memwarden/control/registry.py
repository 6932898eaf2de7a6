"""Named RPC methods: their handler, whether they change state, and a one-line doc."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from memwarden.control.protocol import METHOD_NOT_FOUND, PERMISSION_DENIED, InvalidParams, RpcError

Handler = Callable[..., Awaitable[Any]]

# Methods renamed in 0.2 (one word per meaning: Ollama models are `models`, LoRA adapters `adapters`; every
# name `noun` or `noun.verb`): a call by the old name is told the new one.
RENAMED = {"adapters": "models.list", "adapters.load": "models.load", "adapters.evict": "models.evict",
           "adapters.pin": "models.pin", "adapters.unpin": "models.unpin", "containers": "containers.list",
           "leaks": "containers.leaks", "restart_history": "containers.history"}


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    admin: bool
    doc: str
    cancellable: bool  # a client's hang-up may cancel it mid-way (connection.py)


class Registry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def add(self, name: str, handler: Handler, admin: bool = False, doc: str = "",
            cancel_on_hangup: bool | None = None) -> None:
        """`cancel_on_hangup` defaults to `not admin`: read methods change nothing, so cancelling one is always
        safe; a state-changing method is cancelled only when it says so (a wait that nobody will hear the end
        of), and otherwise runs to its end once begun."""
        if name in self.methods:
            raise ValueError(f"method {name!r} registered twice")
        self.methods[name] = Method(name, handler, admin, doc or (handler.__doc__ or "").strip().split("\n")[0],
                                    not admin if cancel_on_hangup is None else cancel_on_hangup)

    async def call(self, name: str, params: dict[str, Any], may_change_state: bool, peer: Any = None) -> Any:
        """Handlers that declare a `peer` parameter get the caller's credentials; clients cannot pass it."""
        method = self.methods.get(name)
        if method is None:
            if name in RENAMED and RENAMED[name] in self.methods:
                raise RpcError(METHOD_NOT_FOUND, f"method not found: {name!r} was renamed {RENAMED[name]!r} "
                                                 "in memwarden 0.2")
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {name!r} (try 'methods')")
        if method.admin and not may_change_state:
            raise RpcError(PERMISSION_DENIED,
                           f"permission denied: {name!r} changes state: run it as root (sudo), as the daemon's "
                           "user, or as a member of the group daemon.admin_group names")
        if "peer" in params:
            raise InvalidParams(f"{name}: 'peer' is set by the server, not the client")
        wants_peer = "peer" in inspect.signature(method.handler).parameters
        kwargs = {**params, "peer": peer} if wants_peer else params
        try:
            inspect.signature(method.handler).bind(**kwargs)
        except TypeError as exc:
            raise InvalidParams(f"{name}: {exc}") from None
        return await method.handler(**kwargs)
