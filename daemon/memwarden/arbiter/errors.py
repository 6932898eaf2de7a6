"""The arbiter's refusal, in a leaf module: every part of the arbiter, the proxy and the RPC layer raise or catch
it without importing the arbiter itself."""

from __future__ import annotations

from collections.abc import Iterable


class ArbiterError(Exception):
    """A request the arbiter refuses; the message says why in words a user can act on. `holders`: what holds the
    GPU memory a refused lease needed (models, pins, leases, processes), in words, largest first; empty when the
    refusal is not about room."""

    def __init__(self, message: str, holders: Iterable[str] = ()):
        super().__init__(message)
        self.holders = tuple(holders)
