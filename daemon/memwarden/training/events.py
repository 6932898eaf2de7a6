"""Progress events: one JSON object per line on the trainer's stdout (jobspec.EVENTS says which, with what).

stdout is the protocol, so nothing else may write to it: `Emitter.claim_stdout()` keeps a private duplicate of
file descriptor 1 for the events and points fd 1 (and `sys.stdout`) at stderr, so a stray print from Python or
C code (bitsandbytes, tqdm) lands in the log instead of corrupting a line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import IO, Any

from memwarden.learning.jobspec import EVENTS


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null (a NaN loss is still reported, as null plus `nan: true`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class Emitter:
    def __init__(self, stream: IO[str] | None = None):
        self._stream = stream if stream is not None else sys.stdout

    @classmethod
    def claim_stdout(cls) -> Emitter:
        sys.stdout.flush()
        fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(os.fdopen(fd, "w", buffering=1, encoding="utf-8"))

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        if event not in EVENTS:
            raise ValueError(f"unknown progress event {event!r}")
        record = {"event": event, "t": round(time.time(), 3), **_clean(fields)}
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()
        return record
