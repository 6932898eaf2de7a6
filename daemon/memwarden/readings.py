"""What the sample passes last read and decided: the snapshots and policy states that `status`, `host`, `gpu`
and the metrics show; and how the last reload ended.

The sample pass (sample_pass.py) is the only writer but for last_reload (reload.py), and each swaps whole
values, so a reader on the same loop never sees half a pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from memwarden.policies import host_trend
from memwarden.policies.gpu_health import GpuPolicyState
from memwarden.policies.host_memory import HostPolicyState
from memwarden.policies.leak_scales import LeakHistory
from memwarden.snapshots import GpuSnapshot, HostSnapshot, OllamaSnapshot


@dataclass
class Readings:
    started_at: float  # wall clock: what is shown
    # Uptime counts monotonic seconds: a step of the wall clock must not make it negative.
    started_mono: float = field(default_factory=time.monotonic)
    host: HostSnapshot | None = None
    gpu: GpuSnapshot | None = None
    ollama: OllamaSnapshot | None = None
    host_state: HostPolicyState = field(default_factory=HostPolicyState)
    gpu_state: GpuPolicyState = field(default_factory=GpuPolicyState)
    host_used: LeakHistory = field(default_factory=host_trend.new_history)  # used RAM at every leak scale
    host_trend: host_trend.HostTrend | None = None
    samples: int = 0  # passes completed
    last_at: float | None = None  # wall-clock end of the last pass
    last_ms: float | None = None  # how long it took
    ready: bool = False  # READY=1 was sent: the first pass completed
    # The last reload's outcome (reload.py): a SIGHUP has no caller to tell, so `status` must show a refusal.
    last_reload: dict[str, Any] | None = None

    def uptime(self) -> float:
        return time.monotonic() - self.started_mono
