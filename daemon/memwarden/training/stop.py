"""SIGTERM / SIGINT (a preemption, or Ctrl-C) only set a flag; the loop checks it between micro-steps."""

from __future__ import annotations

import signal


class StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, _frame: object) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None
