"""The supervised loss of a micro-batch: cross-entropy on the memories' assistant tokens, and on the base's
general rehearsal (examples tagged general) either the same cross-entropy or, with hyper.general_loss "distill",
distillation from the base (learning without forgetting).

Distillation trains the adapted model's next-token distribution on a general example's assistant tokens towards
the base's own: KL(base ‖ adapted) summed over those tokens, the base's distribution read from the same model with
its adapter disabled (peft's disable_adapter) under no_grad. Cross-entropy on a few dozen general conversations
seen at every one of a run's passes fits their text, which is not what the base would have said of them, and the
held-out general probe pays for it; the base's distribution is what keeps the probe where it was. A full
fine-tune has no adapter to disable: it learns general rehearsal by cross-entropy (a note in the start event).

Both terms are sums over the same positions in nats, so the step's loss stays the sum over its assistant tokens
divided by their count (trainer.py), however the step is split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from memwarden.training.data import IGNORE, Example
from memwarden.training.evaluation import token_loss_sum
from memwarden.training.model import Built

FULL_NOTE = ("hyper.general_loss distill: a full fine-tune has no adapter to disable for the base's distribution; "
             "general rehearsal is learnt by cross-entropy")


def kl_from_base_sum(logits: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ over the labelled next-token positions of KL(base ‖ adapted): Σ_v p_base(v) (log p_base(v) − log p(v))."""
    mask = labels[:, 1:] != IGNORE
    log_q = F.log_softmax(logits[:, :-1, :][mask].float(), dim=-1)
    log_p = F.log_softmax(base_logits[:, :-1, :][mask].float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum()


class SupervisedLoss:
    """loss_sum(chunk, batch, logits): the micro-batch's summed token loss, as hyper.general_loss says."""

    def __init__(self, built: Built, general_loss: str, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.built, self.autocast = built, autocast
        self.distill = general_loss == "distill" and built.is_peft
        if general_loss == "distill" and not built.is_peft:
            built.notes.append(FULL_NOTE)

    def loss_sum(self, chunk: Sequence[Example], batch: dict, logits: torch.Tensor) -> torch.Tensor:
        labels = batch["labels"]
        rows = [i for i, e in enumerate(chunk) if e.general]
        if not self.distill or not rows:
            return token_loss_sum(logits, labels)
        general = torch.zeros(len(chunk), dtype=torch.bool, device=labels.device)
        general[rows] = True
        memories = token_loss_sum(logits, labels.masked_fill(general[:, None], IGNORE))
        index = torch.tensor(rows, device=labels.device)
        with torch.no_grad(), self.built.model.disable_adapter(), self.autocast():
            base_logits = self.built.model(input_ids=batch["input_ids"][index],
                                           attention_mask=batch["attention_mask"][index]).logits
        return memories + kl_from_base_sum(logits[index], base_logits, labels[index])
