"""Admission: what a model request asks of the GPU, and whether it may go to Ollama now.

`read_request` takes from a capped JSON body only what admission needs (the model, keep_alive, whether it is
an unload) and checks it as Ollama would; the body itself is forwarded as it came. A request Ollama will refuse
(bad JSON, a keep_alive that is no duration, a model it does not have) is forwarded untouched and unrecorded, so
the client gets Ollama's own answer and the scheduler's records stay true.

`Admitter.admit` then decides: a resident model is a hit (recency fed to the scheduler, forwarded at once); a
missing one asks the scheduler to make room. When a lease holds the room, the request waits up to
proxy.hold_timeout — or, with proxy.preempt, asks preemptible leases to yield.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memwarden.arbiter.errors import ArbiterError
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaError, keep_alive_text, normalize
from memwarden.proxy.bodies import Refusal

if TYPE_CHECKING:
    from memwarden.arbiter.arbiter import GpuArbiter
    from memwarden.config.schema import ProxyConfig

log = get_logger()

RETRY_AFTER_S = 30
UNLOAD_ENDPOINTS = frozenset({"/api/generate", "/api/chat"})  # an empty prompt with keep_alive 0 unloads


@dataclass(frozen=True)
class ModelRequest:
    """What admission reads from a request body."""

    model: str | None  # normalized; None when the body names none Ollama would accept
    keep_alive: str | None = None  # in keep_alive_text's spelling; None when absent (Ollama's default)
    unload: bool = False
    refused: str | None = None  # why Ollama will answer 400: then nothing is admitted or recorded


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")  # NaN, Infinity: Python reads them, Go refuses them


# One decoder for every request: json.loads given any option builds a new one per call, which cost more than
# the parse of a prompt.
_JSON = json.JSONDecoder(parse_constant=_no_constants)


def read_request(path: str, raw: bytes | bytearray) -> ModelRequest:
    try:
        body = _JSON.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))  # as json.loads reads bytes
    except (ValueError, RecursionError) as exc:
        return ModelRequest(None, refused=f"invalid JSON: {str(exc)[:120]}")
    if not isinstance(body, dict):
        return ModelRequest(None, refused="the body is not a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return ModelRequest(None, refused="no model named")
    keep_alive: str | None = None
    given = body.get("keep_alive")
    if given is not None:  # JSON null is "absent" to Ollama
        try:
            keep_alive = keep_alive_text(given)
        except ValueError as exc:
            return ModelRequest(normalize(model), refused=f"keep_alive: {str(exc)[:120]}")
    empty = not body.get("prompt") and not body.get("messages")
    unload = path in UNLOAD_ENDPOINTS and empty and keep_alive == "0s"
    return ModelRequest(normalize(model), keep_alive, unload)


@dataclass(frozen=True)
class Admission:
    """Forward the request (noting `model` resident once Ollama answers 200), or answer `refusal` instead."""

    model: str | None = None
    refusal: Refusal | None = None


class Admitter:
    def __init__(self, arbiter: GpuArbiter, cfg: ProxyConfig):
        self.arbiter = arbiter
        self.cfg = cfg
        self.held = 0
        self.preemptions = 0

    def admit_hit(self, req: ModelRequest) -> Admission | None:
        """The admission of a request for a resident model, decided at once; None when it must wait for `admit`.
        The use is not yet recorded: `noted` records it, in the same callback, once the request is on its way."""
        if req.model is None or req.refused is not None or req.unload:
            return Admission()  # Ollama answers it in its own words; nothing to make room for or record
        a = self.arbiter
        if self.cfg.preempt:
            a.serving_busy_until = time.monotonic() + self.cfg.resume_after_idle
        return Admission(req.model) if a.resident(req.model) else None

    def noted(self, req: ModelRequest, admission: Admission) -> None:
        """Record an admitted hit's use (the scheduler's recency, its keep_alive). Eviction is planned only by
        other callbacks, so recording it after the request's write, before the loop runs anything else, keeps the
        model as safe as recording it first, and the scheduler's work overlaps with Ollama's."""
        if admission.model is not None:
            self.arbiter.note_use(admission.model, req.keep_alive)

    async def admit(self, req: ModelRequest) -> Admission:
        if (hit := self.admit_hit(req)) is not None:
            self.noted(req, hit)
            return hit
        a = self.arbiter
        model = req.model
        assert model is not None
        try:
            if await a.installed_size(model) is None:
                return Admission()  # Ollama's own 404 says it best; the name is not recorded
        except OllamaError as exc:
            return Admission(refusal=Refusal(502, f"memwarden proxy: {exc}"))
        deadline = time.monotonic() + self.cfg.hold_timeout
        preempted: set[str] = set()
        while True:
            try:
                await a.ensure(model, req.keep_alive, load=False)
                return Admission(model)
            except OllamaError as exc:
                return Admission(refusal=Refusal(502, f"memwarden proxy: {exc}"))
            except ArbiterError as exc:  # no room now
                reason = str(exc)
            if self.cfg.preempt:
                for lease in list(a.leases.values()):
                    if lease.preemptible and lease.state == "active" and lease.id not in preempted:
                        preempted.add(lease.id)
                        self.preemptions += 1
                        await a.preempt(lease.id, f"proxy request for {model}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("proxy request refused: GPU held", model=model, reason=reason,
                            held_s=self.cfg.hold_timeout)
                return Admission(refusal=Refusal(503, f"memwarden: GPU busy, {reason}", RETRY_AFTER_S))
            self.held += 1
            async with a.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(a.changed.wait(), min(remaining, 5.0))
