"""A clock a test sets by hand: pass it wherever the code takes `clock` or `wall` (a callable returning seconds)."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
