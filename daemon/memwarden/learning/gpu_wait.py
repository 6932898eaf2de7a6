"""What a due run does while its VRAM lease is refused: a pure policy of (refusal, time waited, host, config).

- wait: the run has waited less than `learning.gpu_wait`; it stays queued and asks again on the next pass;
- cpu: past the wait with `learning.cpu_fallback` on, the run trains on the CPU (niced, threads for the host),
  with the largest micro-batch whose RAM keeps the host under `host.ram_warn_percent`: the micro-batch halves and
  the gradient accumulation doubles, so the effective batch, and what the run learns, stay the same;
- held: even a micro-batch of one would push host RAM past `host.ram_warn_percent` (or host RAM is not read
  yet): not started;
- blocked: past the wait without the fallback: the run stays queued and a `training.blocked` alert names what
  holds the GPU and for how long.

Time waited is monotonic: a step of the wall clock neither ends nor prolongs a wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from memwarden.alerts.model import Condition
from memwarden.config.schema import Config
from memwarden.snapshots import HostSnapshot
from memwarden.units import format_duration, format_size

ACTIONS = ("wait", "cpu", "held", "blocked")
CPU_NICE = 10  # a CPU run yields the cores to serving and to everything interactive
ACTIVATIONS = 1024**3  # of a run's RAM estimate, the share that scales with the micro-batch (leasing.lease_size)


@dataclass(frozen=True)
class GpuWait:
    """A refused run's wait: since when (monotonic) and the latest refusal."""

    run_id: str
    adapter: str
    since: float
    reason: str
    holders: tuple[str, ...]


@dataclass(frozen=True)
class WaitDecision:
    action: str  # one of ACTIONS
    run_id: str
    adapter: str
    waited_s: float
    reason: str  # why the GPU was refused (the arbiter's words), or why a CPU run is held
    holders: tuple[str, ...]
    cpu_ram_bytes: int | None = None  # the CPU run's estimated RAM, when the fallback was weighed
    micro_batch: int | None = None  # cpu: the micro-batch and gradient accumulation the CPU run uses
    grad_accum: int | None = None

    def log_fields(self) -> dict[str, Any]:
        return {"decision": "training.gpu_wait", "action": self.action, "run": self.run_id, "adapter": self.adapter,
                "waited_s": round(self.waited_s, 1), "reason": self.reason, "holders": list(self.holders),
                "cpu_ram_bytes": self.cpu_ram_bytes, "micro_batch": self.micro_batch, "grad_accum": self.grad_accum}

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "adapter": self.adapter, "action": self.action,
                "waited_s": round(self.waited_s, 1), "reason": self.reason, "holders": list(self.holders)}

    def condition(self) -> Condition | None:
        """The `training.blocked` alert of a blocked run (or of a CPU run held by the RAM reserve)."""
        if self.action not in ("blocked", "held"):
            return None
        held = ", ".join(self.holders) or "nothing memwarden can name"
        message = (f"training run {self.run_id} of {self.adapter} has waited {format_duration(self.waited_s)} "
                   f"for the GPU, held by: {held}")
        if self.action == "held":
            message += f"; not started on the CPU: {self.reason}"
        return Condition("training.blocked", self.adapter, "warning", message,
                         MappingProxyType({"run": self.run_id, "waited_s": round(self.waited_s, 1),
                                           "holders": self.holders, "reason": self.reason}))


def decide(wait: GpuWait, now: float, config: Config, host: HostSnapshot | None, cpu_ram_bytes: int) -> WaitDecision:
    """`now`: the monotonic clock; `cpu_ram_bytes`: the RAM a CPU run of this job would take at the configured
    micro-batch (its lease size: the weights as the method loads them, and ACTIVATIONS)."""
    cfg = config.learning
    waited = max(0.0, now - wait.since)

    def decision(action: str, reason: str = wait.reason, ram: int | None = None, micro: int | None = None,
                 accum: int | None = None) -> WaitDecision:
        return WaitDecision(action, wait.run_id, wait.adapter, waited, reason, wait.holders, ram, micro, accum)

    if waited < cfg.gpu_wait:
        return decision("wait")
    if not cfg.cpu_fallback:
        return decision("blocked")
    if host is None or host.mem_total <= 0:
        return decision("held", "host RAM has not been read yet", cpu_ram_bytes)
    warn = config.host.ram_warn_percent
    micro, accum = cfg.micro_batch, cfg.grad_accum
    fixed = cpu_ram_bytes - min(ACTIVATIONS, cpu_ram_bytes)
    while True:
        need = fixed + (cpu_ram_bytes - fixed) * micro // cfg.micro_batch
        percent = 100.0 * (host.mem_total - host.mem_available + need) / host.mem_total
        if percent < warn:
            return decision("cpu", ram=need, micro=micro, accum=accum)
        if micro == 1:
            return decision("held", f"a CPU run needs about {format_size(need)} even at a micro-batch of 1: host "
                                    f"RAM would reach {percent:.0f}%, past the {warn:g}% warning level "
                                    f"(host.ram_warn_percent)", need)
        micro, accum = max(1, micro // 2), accum * 2


def cpu_threads(cpus: int | None = None) -> int:
    """Threads for a CPU run: every core this process may use but one, left to serving and the daemon."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus - 1)
