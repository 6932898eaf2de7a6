"""A training step that runs out of memory is tried again at half the micro-batch, in the supervised and in the DPO
stage alike.

Each stage divides its loss by what the whole step holds (assistant tokens, pairs), never by a micro-batch's
share, so a step's gradient does not depend on how it is split: on an out-of-memory error the partial gradient is
dropped, the micro-batch halved and the accumulation doubled (the same effective batch, the same examples), the
random state of the step's start restored, and the very same step tried again. At micro_batch 1 there is nothing
left to halve: the run gives up. The smaller micro-batch stays for the rest of the run and goes into its
checkpoints, which a resumed trainer honours.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from memwarden.training import checkpoint
from memwarden.training.model import is_oom
from memwarden.training.preflight import GiveUp

if TYPE_CHECKING:
    from memwarden.learning.jobspec import JobSpec
    from memwarden.training.events import Emitter
    from memwarden.training.model import Built

Result = TypeVar("Result")


class Splitting(Protocol):
    """What a retry changes and reports on (trainer.Trainer): the micro-batch, the accumulation that keeps the
    effective batch, and the step being tried."""

    spec: JobSpec
    built: Built
    emit: Emitter
    micro_batch: int
    grad_accum: int
    effective: int
    step: int
    oom_injected: bool


def accumulate_step(t: Splitting, optimizer: torch.optim.Optimizer, accumulate: Callable[[], Result],
                    **event_fields: Any) -> Result:
    """accumulate()'s result: the gradient of step t.step + 1, accumulated in micro-batches of t.micro_batch,
    halved as often as memory runs out. Any other exception (a stop request among them) leaves no partial
    gradient and the random state of the step's start: a checkpoint is of the last completed step."""
    rng = checkpoint.capture_rng()
    while True:
        try:
            _inject_oom(t)
            return accumulate()
        except BaseException as exc:
            optimizer.zero_grad(set_to_none=True)
            checkpoint.restore_rng(rng)
            if not is_oom(exc):
                raise
            oom = f"{type(exc).__name__}: {exc}"
        # outside the except block, so the traceback's frames (and their tensors) are already released
        gc.collect()
        if t.built.device.type == "cuda":
            torch.cuda.empty_cache()
        if t.micro_batch <= 1:
            raise GiveUp(f"out of memory at step {t.step + 1} even with micro_batch 1: {oom}")
        t.micro_batch //= 2
        t.grad_accum = math.ceil(t.effective / t.micro_batch)
        t.emit.emit("oom_retry", step=t.step + 1, micro_batch=t.micro_batch, grad_accum=t.grad_accum, error=oom,
                    **event_fields)


def _inject_oom(t: Splitting) -> None:
    """The job spec's test hook: a CUDA-style out-of-memory error, once, at the step it names (of either stage:
    the DPO stage's steps count on from the supervised stage's)."""
    if t.spec.inject_oom_at_step == t.step + 1 and not t.oom_injected:
        t.oom_injected = True
        raise torch.OutOfMemoryError(f"CUDA out of memory (synthetic, inject_oom_at_step={t.spec.inject_oom_at_step})")
