"""The VRAM lease of a training run: needed or not, refused for now, or granted — and its preemption.

A run that trains on a GPU (or on the sim GPU: it trains on the CPU but arbitrates as on a GPU) holds a
preemptible lease while the trainer runs. A refusal is not an error: the run waits and the next tick asks again.
When the arbiter preempts the lease, the trainer is asked to checkpoint and stop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from memwarden.config.schema import Config
from memwarden.logs import get_logger
from memwarden.units import GiB

log = get_logger()

METHOD_FACTOR = {"lora": 1.2, "qlora": 0.45, "full": 4.0}  # VRAM per byte of base weights, with activations
GPU_BACKENDS = ("nvml", "sim")


class Arbiter(Protocol):
    async def acquire(self, size: int, holder: str, pid: int | None = None, *,
                      preemptible: bool = False) -> dict[str, Any]: ...
    async def release(self, lease_id: str, reason: str = ...) -> dict[str, Any]: ...
    async def watch(self, lease_id: str, timeout: float) -> dict[str, Any]: ...


@dataclass(frozen=True)
class NotNeeded:
    """The run trains on the CPU: nothing to arbitrate."""


@dataclass(frozen=True)
class Refused:
    reason: str
    holders: tuple[str, ...] = ()  # what holds the GPU (the arbiter's refusal names them), largest first


@dataclass(frozen=True)
class Granted:
    lease: Mapping[str, Any]  # the arbiter's lease, as the lease RPCs show it

    @property
    def id(self) -> str:
        return self.lease["id"]

    @property
    def gpu(self) -> int:
        return self.lease["gpu"]

    @property
    def size(self) -> int:
        return self.lease["size"]


LeaseOutcome = NotNeeded | Refused | Granted


def device(config: Config, gpu_backend: str) -> str:
    d = config.learning.device
    if d != "auto":
        return d
    return "cuda" if gpu_backend == "nvml" else "cpu"


def lease_size(config: Config) -> int:
    cfg = config.learning
    if cfg.lease_size:
        return cfg.lease_size
    weights = sum(p.stat().st_size for p in Path(cfg.base_model).glob("*.safetensors"))
    return int(weights * METHOD_FACTOR[cfg.method]) + GiB


class TrainingLeases:
    def __init__(self, config: Config, arbiter: Arbiter, gpu_backend: str):
        self.config = config
        self.arbiter = arbiter
        self.gpu_backend = gpu_backend
        self._refusals: dict[str, str] = {}  # run → the reason last logged: a wait is logged once per reason

    async def acquire(self, run_id: str, adapter: str) -> LeaseOutcome:
        if self.config.learning.device == "cpu" or self.gpu_backend not in GPU_BACKENDS:
            return NotNeeded()
        try:
            lease = await self.arbiter.acquire(lease_size(self.config), f"training {adapter} ({run_id})",
                                               os.getpid(), preemptible=True)
        except Exception as exc:  # noqa: BLE001 - ArbiterError: no room now; retried on the next pass
            reason = str(exc)
            if self._refusals.get(run_id) != reason:
                log.info("training waits for VRAM", run=run_id, reason=reason)
                self._refusals[run_id] = reason
            return Refused(reason, tuple(getattr(exc, "holders", ())))
        return Granted(lease)

    async def release(self, outcome: LeaseOutcome) -> None:
        if isinstance(outcome, Granted):
            with contextlib.suppress(Exception):
                await self.arbiter.release(outcome.id, "training run ended")

    async def watch_preemption(self, lease: Granted, preempt: Callable[[], None]) -> None:
        """Until cancelled: call `preempt` once the lease stops being active."""
        while True:
            state = (await self.arbiter.watch(lease.id, 3600))["state"]
            if state != "active":
                log.info("lease preempted; asking the trainer to checkpoint and exit", lease=lease.id)
                preempt()
                return
