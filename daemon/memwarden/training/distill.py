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

The base never changes during a run, so its distribution on the general pool is read once, before the first step
(`remember_base`), when it fits in BASE_CACHE_BYTES: a pool drawn afresh every pass shows each general example
about three times in a round, and a second forward pass in every step cost some 4 s of a round's 60 on the CPU
(BENCHMARKS.md, Recall 5l). It is read in fixed chunks of the pool in file order, so a resumed run reads the
same numbers. A pool whose distributions do not fit (a large vocabulary) is read from the base in each step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from memwarden.training.data import IGNORE, Example, collate
from memwarden.training.evaluation import token_loss_sum
from memwarden.training.model import Built

BASE_CACHE_BYTES = 256 * 2**20  # float32 log-probabilities: assistant tokens × vocabulary × 4
BASE_CHUNK = 16  # general examples a forward pass reads the base's distribution of, in remember_base
FULL_NOTE = ("hyper.general_loss distill: a full fine-tune has no adapter to disable for the base's distribution; "
             "general rehearsal is learnt by cross-entropy")


def kl_from_base_sum(logits: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ over the labelled next-token positions of KL(base ‖ adapted): Σ_v p_base(v) (log p_base(v) − log p(v))."""
    return kl_sum(logits, labelled_log_probs(base_logits, labels), labels)


def kl_sum(logits: torch.Tensor, log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same sum with the base's log-probabilities given, as labelled_log_probs gives them."""
    log_q = labelled_log_probs(logits, labels)
    return (log_p.exp() * (log_p - log_q)).sum()


def labelled_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The log-probabilities at each labelled next-token position, one row each in the order a boolean mask reads
    them (row by row, position by position)."""
    mask = labels[:, 1:] != IGNORE
    return F.log_softmax(logits[:, :-1, :][mask].float(), dim=-1)


class SupervisedLoss:
    """loss_sum(chunk, batch, logits): the micro-batch's summed token loss, as hyper.general_loss says."""

    def __init__(self, built: Built, general_loss: str, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.built, self.autocast = built, autocast
        self.distill = general_loss == "distill" and built.is_peft
        if general_loss == "distill" and not built.is_peft:
            built.notes.append(FULL_NOTE)
        # the base's log-probs at the labelled positions of every general example, one row each, in one tensor
        # (thousands of small ones made the allocator return and take back memory at every step), and where each
        # example's rows start and end in it, by id(example) with the example itself, so that an id reused by
        # another object never reads them
        self.base = torch.empty(0)
        self.base_rows: dict[int, tuple[Example, int, int]] = {}

    def remember_base(self, examples: Sequence[Example], pad_id: int) -> bool:
        """Read the base's distribution on every general example of `examples` (the train split's own objects,
        which loss_sum is then given) once, if distilling and if they fit in BASE_CACHE_BYTES."""
        general = [e for e in examples if e.general]
        vocab = int(self.built.model.config.vocab_size)
        rows = sum(e.n_targets for e in general)
        if not self.distill or not general or rows * vocab * 4 > BASE_CACHE_BYTES:
            return False
        self.base = torch.empty((rows, vocab), dtype=torch.float32)
        at = 0
        for start in range(0, len(general), BASE_CHUNK):
            part = general[start : start + BASE_CHUNK]
            batch = collate(part, pad_id, self.built.device)
            read = labelled_log_probs(self._base_logits(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            self.base[at : at + len(read)] = read.cpu()  # the mask reads row by row: each example's rows in turn
            for example in part:
                self.base_rows[id(example)] = (example, at, at + example.n_targets)
                at += example.n_targets
        return True

    def _base_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The base's logits: the same model with its adapter disabled, no gradient."""
        with torch.no_grad(), self.built.model.disable_adapter(), self.autocast():
            return self.built.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def loss_sum(self, chunk: Sequence[Example], batch: dict, logits: torch.Tensor) -> torch.Tensor:
        labels = batch["labels"]
        rows = [i for i, e in enumerate(chunk) if e.general]
        if not self.distill or not rows:
            return token_loss_sum(logits, labels)
        general = torch.zeros(len(chunk), dtype=torch.bool, device=labels.device)
        general[rows] = True
        memories = token_loss_sum(logits, labels.masked_fill(general[:, None], IGNORE))
        index = torch.tensor(rows, device=labels.device)
        spans = [self.base_rows.get(id(chunk[i]), (None, 0, 0)) for i in rows]
        if all(kept is chunk[i] for i, (kept, _, _) in zip(rows, spans, strict=True)):
            log_p = torch.cat([self.base[start:end] for _, start, end in spans]).to(logits.device)
            return memories + kl_sum(logits[index], log_p, labels[index])
        base_logits = self._base_logits(batch["input_ids"][index], batch["attention_mask"][index])
        return memories + kl_from_base_sum(logits[index], base_logits, labels[index])
