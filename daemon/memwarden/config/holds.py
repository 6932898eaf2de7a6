"""`alerts.hold`: how long a condition must last before its alert is raised, and be gone before it resolves.

A table of durations keyed by an alert kind (`training.throughput`), a kind's scope (`training`: every
`training.*` kind) or `default`; the most specific key wins. A table in the config file changes only the keys it
names: the others keep their defaults.
"""

from __future__ import annotations

import difflib
from typing import Any

from memwarden.config.routes import KeyProblems
from memwarden.units import parse_duration

# Every alert kind the daemon raises (docs/alerts.md lists them with what they mean).
KINDS = (
    "host.ram", "host.swap", "host.psi", "host.ram_trend", "gpu.vram", "gpu.temperature", "container.leak",
    "container.idle_leak", "container.restart_ineffective", "training.grad_norm", "training.throughput",
    "training.loss", "training.failed", "training.blocked", "probe.degraded", "component.failed", "metrics.unavailable",
    "state.database", "state.file",
)
KEYS = ("default", *sorted({k.split(".")[0] for k in KINDS}), *KINDS)

# host.* and gpu.* hold in their policy already (host.hold, with hysteresis); a container's leak verdict spans
# containers.leak_window; a failed write, a removed state file or a failed run is a fact, not a reading that
# wavers; a run is blocked only once it has waited learning.gpu_wait. Training health is read from a handful
# of steps, which a busy CPU slows for seconds at a time.
DEFAULT_RAW = {"default": "5s", "host": "0s", "gpu": "0s", "container": "0s", "state": "0s", "training": "1m",
               "training.failed": "0s", "training.blocked": "0s"}


class Holds(dict[str, float]):
    """Seconds per key (read-only by convention, hashable so the frozen config is)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def of(self, kind: str) -> float:
        """The hold of `kind`: its own, else its scope's, else the default."""
        for key in (kind, kind.split(".")[0], "default"):
            if key in self:
                return self[key]
        return 0.0


def holds(value: Any) -> Holds:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table such as {{ default = \"5s\", training = \"2m\" }}, got {value!r}")
    problems: list[tuple[str, str]] = []
    out = Holds({k: parse_duration(v) for k, v in DEFAULT_RAW.items()})
    for key, raw in value.items():
        path = f".{key}" if key.replace("_", "").isalnum() else f'."{key}"'
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "a kind (training.throughput), its scope " \
                "(training) or default"
            problems.append((path, f"unknown alert kind; {hint}"))
            continue
        try:
            out[key] = parse_duration(raw)
        except ValueError as exc:
            problems.append((path, str(exc)))
    if problems:
        raise KeyProblems(problems)
    return out
