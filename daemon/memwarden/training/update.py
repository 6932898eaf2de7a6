"""One optimizer update, the same in the supervised and the DPO stage: EWC's penalty added into the gradient,
the gradient clipped at CLIP_NORM (the pre-clip norm is reported), and the update skipped when the loss or the
gradient is not finite — given up after MAX_NONFINITE_STEPS such steps in a row."""

from __future__ import annotations

import math

import torch

from memwarden.training.ewc import EwcPenalty
from memwarden.training.preflight import GiveUp

CLIP_NORM = 1.0
MAX_NONFINITE_STEPS = 5  # consecutive steps with a NaN/inf loss or gradient (skipped) before giving up


class Updater:
    def __init__(self) -> None:
        self.nonfinite = 0

    def apply(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], ewc: EwcPenalty | None,
              loss: float, step: int) -> tuple[float | None, float, bool]:
        """(EWC penalty, pre-clip gradient norm, skipped) of the update that completes step `step`."""
        penalty = ewc.add_to_grad() if ewc else None
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, CLIP_NORM))
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if skipped:
            self.nonfinite += 1
            if self.nonfinite >= MAX_NONFINITE_STEPS:
                raise GiveUp(f"loss or gradient not finite for {self.nonfinite} steps in a row (step {step})")
        else:
            self.nonfinite = 0
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return penalty, grad_norm, skipped
