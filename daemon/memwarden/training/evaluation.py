"""What the trainer measures without training: a split's loss, the losses the EWC Fisher is made of, and the
before/after losses of the run's report (learning/eval_report.py).

A loss is the sum of next-token cross-entropy over the assistant tokens divided by their count; evaluation runs
in eval mode (no dropout) and stops between batches when a stop is asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from memwarden.learning.eval_report import Losses
from memwarden.training.data import IGNORE, Example, Order, Split, collate
from memwarden.training.model import Built


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over the labelled (assistant) positions."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def autocast(built: Built) -> contextlib.AbstractContextManager:
    if built.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=built.device.type, dtype=built.autocast_dtype)


class Evaluation:
    def __init__(self, built: Built, pad_id: int, check_stop: Callable[[], None]):
        self.built = built
        self.pad_id = pad_id
        self.check_stop = check_stop

    def _logits(self, examples: list[Example]) -> tuple[torch.Tensor, dict]:
        batch = collate(examples, self.pad_id, self.built.device)
        with autocast(self.built):
            logits = self.built.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits, batch

    @torch.no_grad()
    def loss(self, split: Split, batch_size: int) -> float | None:
        """The split's token-mean loss (None for an empty split), shortest examples batched together."""
        if not split.examples:
            return None
        model = self.built.model
        model.eval()
        try:
            ordered = sorted(split.examples, key=len)
            total, targets = torch.zeros((), device=self.built.device), 0
            size = max(1, batch_size)
            for i in range(0, len(ordered), size):
                self.check_stop()
                chunk = ordered[i : i + size]
                logits, batch = self._logits(chunk)
                total += token_loss_sum(logits, batch["labels"])
                targets += sum(e.n_targets for e in chunk)
            return float(total) / targets
        finally:
            model.train()

    def fisher_losses(self, train: Split, holdout: Split, want: int, seed: int) -> Iterator[torch.Tensor]:
        """Per-example token-mean losses for the Fisher: training examples in seeded order, then holdout ones."""
        pool = [train.examples[i] for i in Order(len(train.examples), seed + 1).indices(
            0, min(want, len(train.examples)))]
        pool += holdout.examples[: max(0, want - len(pool))]
        model = self.built.model
        model.eval()  # no dropout: the Fisher of the model as it will be served
        try:
            for ex in pool:
                logits, batch = self._logits([ex])
                yield token_loss_sum(logits, batch["labels"]) / ex.n_targets
        finally:
            model.train()

    def before(self, holdout: Split, probe: Split, general: Split, batch_size: int) -> dict[str, float | None]:
        """The losses measured once before the first step, kept in the checkpoints for the report's `before`."""
        return {"holdout_loss": self.loss(holdout, batch_size), "probe_loss": self.loss(probe, batch_size),
                "general_loss": self.loss(general, batch_size)}

    def losses(self, before: Mapping[str, float | None] | None, holdout: Split, probe: Split, general: Split,
               batch_size: int) -> Losses:
        """The run's losses: `before` as measured before its first step, after as now."""
        before = before or {}
        return Losses(holdout_loss_before=before.get("holdout_loss"),
                      holdout_loss_after=self.loss(holdout, batch_size),
                      probe_loss_before=before.get("probe_loss"),
                      probe_loss_after=self.loss(probe, batch_size),
                      general_loss_before=before.get("general_loss"),
                      general_loss_after=self.loss(general, batch_size))
