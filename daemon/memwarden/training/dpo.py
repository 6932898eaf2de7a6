"""The DPO stage: after the supervised stage, in the same process, under the same lease, checkpoints and stop
machinery, the run learns its preference pairs (JobSpec.preference_file) with the sigmoid DPO loss
(Rafailov et al. 2023): −log σ(β · ((log πc − log refc) − (log πr − log refr))), log π the summed log-probability
of a reply's tokens given its prompt through the chat template.

The reference is the policy as the supervised stage left it, its log-probabilities computed once when the stage
begins (TRL's precompute_ref_log_probs): no second copy of the model is held, and they are saved in every
checkpoint of the stage, so a resumed run does not recompute them from a policy that has moved since. A
checkpoint says which stage wrote it; a resume in this stage skips the supervised one. The stage's steps count on
from the supervised stage's, so checkpoints stay ordered by step; its optimizer is its own AdamW at a constant
`dpo_lr`, saved beside the supervised one's; an update is the supervised stage's (update.py: EWC's penalty,
clipping, non-finite steps skipped). Dropout is off in the stage, as TRL's disable_dropout does: the policy is
measured as the reference was, so the stage starts at the loss log 2 and a zero margin.

Held-out pairs are never trained by this stage. Preference accuracy is the share of them whose chosen reply has
a higher log-probability than the rejected one: what the served model would prefer. The margin over the
reference (TRL's reward accuracy) is 0 for every pair before the stage by construction, so a before/after
comparison of it would say nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from memwarden.learning.eval_report import Preference, Recall
from memwarden.training.data import IGNORE, DataError, Example, Order, collate, encode
from memwarden.training.evaluation import autocast
from memwarden.training.model import memory_bytes
from memwarden.training.oom_retry import Splitting, accumulate_step

if TYPE_CHECKING:
    from memwarden.training.ewc import EwcPenalty
    from memwarden.training.recall import EarlyStop
    from memwarden.training.update import Updater

STAGE = "dpo"
ORDER_SEED = 7_919  # the pairs' order is seeded apart from the supervised examples' order


@dataclass(frozen=True)
class PreferencePair:
    chosen: Example
    rejected: Example
    heldout: bool


def load_pairs(path: str | Path | None, tokenizer: Any, max_seq_len: int) -> list[PreferencePair]:
    """The file's pairs, each reply rendered after its prompt with the loss on the reply; a pair one of whose
    replies was cut away entirely by max_seq_len is left out."""
    if path is None:
        return []
    pairs = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompt, chosen, rejected = obj["prompt"], obj["chosen"], obj["rejected"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{lineno}: expected {{prompt, chosen, rejected}}: {exc}") from exc
        encoded = [encode(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                          max_seq_len)[0] for reply in (chosen, rejected)]
        if encoded[0] is not None and encoded[1] is not None:
            pairs.append(PreferencePair(encoded[0], encoded[1], bool(obj.get("heldout"))))
    return pairs


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence, the summed log-probability of its labelled (reply) tokens."""
    shift_logits, shift_labels = logits[:, :-1, :].float(), labels[:, 1:]
    mask = shift_labels != IGNORE
    picked = torch.gather(shift_logits.log_softmax(-1), 2, shift_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sigmoid DPO loss of each pair and its reward margin β · ((πc − refc) − (πr − refr))."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


def preference_accuracy(chosen: list[float], rejected: list[float]) -> float | None:
    """The share of pairs whose chosen reply is the more likely; None for no pair."""
    if not chosen:
        return None
    return round(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen), 4)


class Supervised(Splitting, Protocol):
    """What the stage takes over from the supervised stage (trainer.Trainer): the model and the run's spec, the
    counters it carries on (the micro-batch among them, which an out-of-memory error in either stage halves), and
    the checkpoint and stop machinery."""

    params: dict[str, torch.nn.Parameter]
    ewc: EwcPenalty | None
    updater: Updater
    early: EarlyStop
    dry: bool
    pad_id: int
    target: int
    tokens: int
    train_seconds: float

    def check_stop(self) -> None: ...
    def _checkpoint(self, emit: bool = True) -> Path: ...
    def _checkpoint_due(self) -> bool: ...


class DpoStage:
    def __init__(self, trainer: Supervised):
        self.t = trainer
        h = trainer.spec.hyper
        pairs = load_pairs(trainer.spec.preference_file, trainer.built.tokenizer, h.max_seq_len)
        self.train = [p for p in pairs if not p.heldout]
        self.heldout = [p for p in pairs if p.heldout]
        wanted = min(trainer.spec.dry_run_steps, h.dpo_steps) if trainer.dry else h.dpo_steps
        self.steps = wanted if self.train and self.heldout else 0
        self.batch = min(trainer.effective, len(self.train))
        self.active = False  # the stage has begun: its reference and optimizer exist
        self.start_step = 0  # the run's step the supervised stage ended at
        self.done = 0  # this stage's steps completed
        self.ref_train: list[tuple[float, float]] = []
        self.ref_heldout: list[tuple[float, float]] = []
        self.accuracy_before: float | None = None
        self.accuracy_after: float | None = None
        self.recall_before = Recall()
        self.optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_meta(self) -> dict[str, Any]:
        if not self.active:
            return {"stage": "sft"}
        return {"stage": STAGE, "dpo": {"start_step": self.start_step, "done": self.done, "ref_train": self.ref_train,
                                        "ref_heldout": self.ref_heldout, "accuracy_before": self.accuracy_before,
                                        "recall_before": asdict(self.recall_before)}}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"dpo_optimizer": self.optimizer.state_dict()} if self.active and self.optimizer else {}

    def restore(self, ck: dict[str, Any]) -> None:
        """Resume in this stage from a checkpoint it wrote: the supervised stage is over."""
        meta = ck["meta"]
        if meta.get("stage") != STAGE:
            return
        saved = meta["dpo"]
        self.start_step, self.done = int(saved["start_step"]), int(saved["done"])
        self.ref_train = [tuple(r) for r in saved["ref_train"]]
        self.ref_heldout = [tuple(r) for r in saved["ref_heldout"]]
        self.accuracy_before = saved["accuracy_before"]
        self.recall_before = Recall.from_dict(saved["recall_before"])
        self._new_optimizer()
        self.optimizer.load_state_dict(ck["state"]["dpo_optimizer"])
        self.active = True
        self.t.target = self.start_step

    def _new_optimizer(self) -> None:
        self.optimizer = torch.optim.AdamW(list(self.t.params.values()), lr=self.t.spec.hyper.dpo_lr,
                                           weight_decay=0.0)

    # ------------------------------------------------------------------ the stage

    def run(self) -> None:
        if self.steps <= 0:
            return
        t = self.t
        resumed = self.active
        if not self.active:
            self.recall_before = t.early.final_recall(t.step)
        t.built.model.eval()  # no dropout in the stage (TRL's disable_dropout): the policy is measured as the reference
        try:
            self._run(resumed)
        finally:
            t.built.model.train()

    def _run(self, resumed: bool) -> None:
        t = self.t
        if not resumed:
            self._begin()
        t.emit.emit("stage", stage=STAGE, step=t.step, steps=self.steps, pairs=len(self.train),
                    heldout=len(self.heldout), beta=t.spec.hyper.dpo_beta, lr=t.spec.hyper.dpo_lr,
                    accuracy_before=self.accuracy_before, recall_before=asdict(self.recall_before), resumed=resumed)
        order = Order(len(self.train), t.spec.hyper.seed + ORDER_SEED)
        while self.done < self.steps:
            t.check_stop()
            started = time.perf_counter()
            loss, margin, accuracy, grad_norm, tokens = self._step(order)
            elapsed = time.perf_counter() - started
            t.tokens += tokens
            t.train_seconds += elapsed
            t.emit.emit("step", stage=STAGE, step=t.step, dpo_step=self.done, loss=loss, margin=margin,
                        accuracy=accuracy, lr=t.spec.hyper.dpo_lr, grad_norm=grad_norm,
                        tokens_per_s=round(tokens / elapsed, 1) if elapsed > 0 else None,
                        memory_bytes=memory_bytes(t.built.device))
            if not t.dry and self.done < self.steps and t._checkpoint_due():
                t._checkpoint()
        chosen, rejected = self._logps(self.heldout)
        self.accuracy_after = preference_accuracy(chosen, rejected)

    def _begin(self) -> None:
        """The reference, measured once from the policy the supervised stage left; a checkpoint keeps it."""
        t = self.t
        self.ref_train = list(zip(*self._logps(self.train), strict=True))
        chosen, rejected = self._logps(self.heldout)
        self.ref_heldout = list(zip(chosen, rejected, strict=True))
        self.accuracy_before = preference_accuracy(chosen, rejected)
        self.start_step, self.done = t.step, 0
        self._new_optimizer()
        self.active = True
        if not t.dry:
            t._checkpoint()  # a crash from here on resumes in this stage, with this reference

    @torch.no_grad()
    def _logps(self, pairs: list[PreferencePair]) -> tuple[list[float], list[float]]:
        chosen: list[float] = []
        rejected: list[float] = []
        for i in range(0, len(pairs), max(1, self.t.micro_batch)):
            self.t.check_stop()
            c, r = self._forward(pairs[i : i + max(1, self.t.micro_batch)])
            chosen += c.tolist()
            rejected += r.tolist()
        return chosen, rejected

    def _forward(self, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen and rejected replies in one batch: their summed log-probabilities."""
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], self.t.pad_id, self.t.built.device)
        with autocast(self.t.built):
            logits = self.t.built.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps = sequence_logps(logits, batch["labels"])
        return logps[: len(pairs)], logps[len(pairs) :]

    def _step(self, order: Order) -> tuple[float, float, float, float, int]:
        t = self.t
        indices = order.indices(self.done * self.batch, self.batch)
        loss_sum, margin_sum, positive, tokens = accumulate_step(t, self.optimizer, lambda: self._accumulate(indices),
                                                                 stage=STAGE)
        loss = loss_sum / len(indices)
        _, grad_norm, _ = t.updater.apply(self.optimizer, list(t.params.values()), t.ewc, loss, t.step + 1)
        self.done += 1
        t.step += 1
        return loss, margin_sum / len(indices), positive / len(indices), grad_norm, tokens

    def _accumulate(self, indices: list[int]) -> tuple[float, float, int, int]:
        """The step's gradient over its pairs in micro-batches of the trainer's micro_batch pairs: summed loss,
        summed margin, pairs with a positive margin, tokens."""
        t = self.t
        loss_sum = margin_sum = 0.0
        positive = tokens = 0
        for n in range(0, len(indices), t.micro_batch):
            chunk = indices[n : n + t.micro_batch]
            pc, pr = self._forward([self.train[i] for i in chunk])
            ref = torch.tensor([self.ref_train[i] for i in chunk], device=pc.device)
            losses, margins = dpo_losses(pc, pr, ref[:, 0], ref[:, 1], t.spec.hyper.dpo_beta)
            (losses.sum() / len(indices)).backward()
            loss_sum += float(losses.detach().sum())
            margin_sum += float(margins.detach().sum())
            positive += int((margins > 0).sum())
            tokens += sum(len(self.train[i].chosen) + len(self.train[i].rejected) for i in chunk)
            if n + t.micro_batch < len(indices):
                t.check_stop()  # after the step's last micro-step the step is completed first
        return loss_sum, margin_sum, positive, tokens

    def report(self) -> Preference:
        if not self.active:
            return Preference()
        return Preference(pairs=len(self.train), heldout=len(self.heldout), steps=self.done,
                          beta=self.t.spec.hyper.dpo_beta, accuracy_before=self.accuracy_before,
                          accuracy_after=self.accuracy_after, recall_before=self.recall_before)
