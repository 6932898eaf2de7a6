"""The training loop — plain PyTorch, not HF Trainer, so that every step is ours to checkpoint, retry or stop.

One optimizer step consumes `effective batch = micro_batch × grad_accum` examples, in micro-batches of
`micro_batch`. The loss is the sum of token losses over the whole step divided by the step's assistant-token
count, so the gradient does not depend on how the step is split: after an OOM the micro-batch is halved and the
accumulation doubled and the very same step is retried with the same gradient (oom_retry.py, shared with the DPO
stage). General rehearsal is learnt by cross-entropy or by distillation from the base (distill.py). AdamW,
cosine schedule with linear warmup, gradient clipping at 1.0 (the pre-clip norm is reported), online EWC added
into the gradient.

Checkpoints are written every `checkpoint_every_steps` steps or `checkpoint_every_seconds`, and at the end of
training; a run starts from the newest complete one. SIGTERM/SIGINT: the current micro-step finishes, the step in
progress is abandoned (or completed, if it was its last micro-step), a checkpoint of the last completed step is
written and the trainer exits 75. Evaluation before training is done once and kept in the checkpoints; a dry run
evaluates nothing, since no report is made of it (it tries the steps, their memory and the data). Training
stops before max_steps once recall on this run's memories reaches hyper.min_recall and the earlier rounds' probe is
back within hyper.forgetting_epsilon of its recall before the run (recall.EarlyStop).
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from memwarden.learning.adapter_check import check_adapter
from memwarden.learning.eval_report import EvalReport, ExportCheck, Losses, Recall
from memwarden.learning.jobspec import EXIT_DONE, EXIT_FAILED, EXIT_PREEMPTED, JobSpec
from memwarden.training import checkpoint
from memwarden.training.data import DataError, Order, collate, load_split
from memwarden.training.distill import SupervisedLoss
from memwarden.training.dpo import DpoStage
from memwarden.training.evaluation import Evaluation, autocast
from memwarden.training.events import Emitter
from memwarden.training.ewc import EwcPenalty, combine, compute_fisher, setup_ewc
from memwarden.training.export import FISHER_FILE, write_final
from memwarden.training.model import build, is_oom, memory_bytes
from memwarden.training.oom_retry import accumulate_step
from memwarden.training.preflight import GiveUp, already_done, validate
from memwarden.training.recall import EarlyStop, RecallMeter, load_items
from memwarden.training.stop import StopFlag
from memwarden.training.update import Updater


class Preempted(Exception):
    """SIGTERM/SIGINT seen: checkpoint and exit 75."""


class Trainer:
    def __init__(self, spec: JobSpec, emit: Emitter, stop: StopFlag | None = None):
        h = spec.hyper
        self.spec, self.emit, self.stop = spec, emit, stop or StopFlag()
        self.out = Path(spec.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.dry = spec.dry_run_steps > 0
        self.target = min(spec.dry_run_steps, h.max_steps) if self.dry else h.max_steps
        self.effective = h.micro_batch * h.grad_accum
        self.micro_batch, self.grad_accum = h.micro_batch, h.grad_accum
        self.step = 0
        self.cursor = 0  # samples consumed so far (over epochs)
        self.tokens = 0
        self.train_seconds = 0.0
        self.eval_before: dict[str, float | None] | None = None
        self.oom_injected = False
        self.updater = Updater()  # shared with the DPO stage: non-finite steps in a row count across the two
        self.last_ckpt: tuple[int, Path] | None = None
        self.last_ckpt_time = time.monotonic()
        self.anchor: dict[str, torch.Tensor] | None = None
        self.prior: dict[str, torch.Tensor] | None = None
        self.ewc: EwcPenalty | None = None
        self.stopped_early = False

    # ------------------------------------------------------------------ entry

    def run(self) -> int:
        try:
            return self._run()
        except Preempted:
            return self._preempted()
        except (GiveUp, DataError) as exc:
            self.emit.emit("error", message=str(exc))
            return EXIT_FAILED
        except Exception as exc:  # noqa: BLE001 - the daemon gets one line, the log the traceback
            message = f"{type(exc).__name__}: {exc}"
            if is_oom(exc):
                message = f"out of memory outside a training step: {message}"
            # The line first, on the pipe: the log lives beside the run, and on a full disk writing the
            # traceback there fails too — the line that says why must already be out.
            self.emit.emit("error", message=message)
            with contextlib.suppress(OSError):
                traceback.print_exc(file=sys.stderr)
            return EXIT_FAILED

    def check_stop(self) -> None:
        if self.stop.requested:
            raise Preempted()

    # ------------------------------------------------------------------ setup

    def _run(self) -> int:
        spec, h = self.spec, self.spec.hyper
        validate(spec)
        self.out.mkdir(parents=True, exist_ok=True)
        if (done := already_done(spec)) is not None:
            self.emit.emit("done", **done, already_done=True)
            return EXIT_DONE
        self.check_stop()

        from transformers import get_cosine_schedule_with_warmup, set_seed
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        set_seed(h.seed)
        self.built = build(spec)
        tok = self.built.tokenizer
        self.pad_id = tok.pad_token_id
        self.evaluation = Evaluation(self.built, self.pad_id, self.check_stop)
        self.loss = SupervisedLoss(self.built, h.general_loss, lambda: autocast(self.built))
        self.train = load_split("train", spec.train_file, tok, h.max_seq_len)
        self.holdout = load_split("holdout", spec.holdout_file, tok, h.max_seq_len)
        self.probe = load_split("probe", spec.probe_file, tok, h.max_seq_len)
        self.general = load_split("general", spec.general_file, tok, h.max_seq_len)
        self.recall_meter = RecallMeter(self.built, h.recall_max_new_tokens, self.check_stop)
        sample = 0 if self.dry else h.recall_sample
        self.recall_items = load_items(spec.recall_file, tok, h.max_seq_len, sample, h.seed)
        self.probe_items = load_items(spec.probe_file, tok, h.max_seq_len, sample, h.seed)
        self.early = EarlyStop(self.recall_meter, self.recall_items, h.min_recall, h.recall_every,
                               h.recall_check_sample, h.seed)
        self.dpo = DpoStage(self)
        if not self.train.examples:
            raise GiveUp(f"no usable training example in {spec.train_file} ({self.train.lines} lines, "
                         f"{self.train.dropped} with no assistant token within max_seq_len {h.max_seq_len})")
        self.loss.remember_base(self.train.examples, self.pad_id)
        self.order = Order(len(self.train.examples), h.seed,
                           [i for i, e in enumerate(self.train.examples) if e.general], h.general_per_pass)
        self.params = self.built.params
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=self.built.lr, weight_decay=0.0)
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, num_warmup_steps=min(h.warmup_steps, h.max_steps), num_training_steps=h.max_steps
        )
        resumed = 0
        if not self.dry:
            checkpoint.clean_temp(self.ckpt_root)
            resumed = self._resume()
        self.prior, self.anchor, self.ewc, ewc_state = setup_ewc(self.spec.ewc, self.params, self.anchor, resumed > 0)
        self.emit.emit(
            "start", run_id=spec.run_id, method=spec.method, device=str(self.built.device), steps=self.target,
            max_steps=h.max_steps, micro_batch=self.micro_batch, grad_accum=self.grad_accum,
            resumed_from_step=resumed, dry_run=self.dry, lr=self.built.lr,
            trainable_params=sum(p.numel() for p in self.params.values()),
            total_params=sum(p.numel() for p in self.built.model.parameters()),
            examples={"train": len(self.train.examples), "holdout": len(self.holdout.examples),
                      "probe": len(self.probe.examples), "general": len(self.general.examples),
                      "dropped": self.train.dropped + self.holdout.dropped + self.probe.dropped,
                      "truncated": self.train.truncated},
            ewc=ewc_state, quantized_layers=self.built.quantized_layers, notes=self.built.notes,
        )
        if self.built.clamp:
            self.emit.emit("clamp", **self.built.clamp)
        self.check_stop()
        if self.eval_before is None and not self.dry:
            self.eval_before = {**self.evaluation.before(self.holdout, self.probe, self.general, self.micro_batch),
                                "probe_recall": asdict(self.recall_meter.measure(self.probe_items))}
        self.early.watch_probe(self.probe_items, Recall.from_dict((self.eval_before or {}).get("probe_recall")),
                               h.forgetting_epsilon)
        self._loop()
        self.dpo.run()
        return self._finish()

    def _resume(self) -> int:
        found = checkpoint.newest_of_job(self.ckpt_root, self.spec.run_id, self.spec.method, self.params,
                                         self.effective)
        if found is not None:
            step, path, ck = found
            meta = ck["meta"]
            with torch.no_grad():
                for key, p in self.params.items():
                    p.copy_(ck["trainable"][key].to(p.device, p.dtype))
            self.optimizer.load_state_dict(ck["state"]["optimizer"])
            self.scheduler.load_state_dict(ck["state"]["scheduler"])
            checkpoint.restore_rng(ck["state"]["rng"])
            self.step, self.cursor = int(meta["step"]), int(meta["cursor"])
            # The smaller micro-batch wins, at the same effective batch: the checkpoint's when this trainer's
            # predecessor halved it on an out-of-memory error, the spec's when the daemon halved it after the
            # kernel killed that predecessor at its MemoryMax.
            if int(meta["micro_batch"]) < self.micro_batch:
                self.micro_batch, self.grad_accum = int(meta["micro_batch"]), int(meta["grad_accum"])
            self.tokens, self.train_seconds = int(meta["tokens"]), float(meta["train_seconds"])
            self.eval_before = meta["eval_before"]
            self.oom_injected = bool(meta.get("oom_injected"))
            if meta.get("stopped_early"):
                self.stopped_early, self.target = True, self.step
            if ck["anchor"] is not None:
                self.anchor = {k: v.to(self.built.device) for k, v in ck["anchor"].items()}
            self.dpo.restore(ck)
            self.last_ckpt = (step, path)
            return step
        return 0

    # ------------------------------------------------------------------ loop

    def _loop(self) -> None:
        h = self.spec.hyper
        while self.step < self.target:
            self.check_stop()
            lr = self.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            loss, tokens, penalty, grad_norm, skipped = self._train_step()
            elapsed = time.perf_counter() - started
            self.tokens += tokens
            self.train_seconds += elapsed
            fields: dict[str, Any] = {
                "step": self.step,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
                "memory_bytes": memory_bytes(self.built.device),
            }
            if penalty is not None:
                fields["ewc_penalty"] = penalty
            if skipped:
                fields["skipped"] = "loss or gradient not finite: no update"
            self.emit.emit("step", **fields)
            if h.eval_every and self.step % h.eval_every == 0 and self.step < self.target:
                holdout_loss = self.evaluation.loss(self.holdout, self.micro_batch)
                self.emit.emit("eval", step=self.step, holdout_loss=holdout_loss)
            if self.step < self.target and self.early.due(self.step):
                reached, measured = self.early.reached(self.step)
                self.emit.emit("recall", step=self.step, **asdict(measured), target=h.min_recall)
                if reached:
                    self.stopped_early, self.target = True, self.step
            if not self.dry and self.step < self.target and self._checkpoint_due():
                self._checkpoint()

    def _checkpoint_due(self) -> bool:
        every = self.spec.checkpoint_every_steps
        if every and self.step % every == 0:
            return True
        seconds = self.spec.checkpoint_every_seconds
        return bool(seconds) and time.monotonic() - self.last_ckpt_time >= seconds

    def _train_step(self) -> tuple[float, int, float | None, float, bool]:
        examples = [self.train.examples[i] for i in self.order.indices(self.cursor, self.effective)]
        targets = sum(e.n_targets for e in examples)
        loss_sum, tokens = accumulate_step(self, self.optimizer, lambda: self._accumulate(examples, targets))
        loss = loss_sum / targets
        penalty, grad_norm, skipped = self.updater.apply(self.optimizer, list(self.params.values()), self.ewc, loss,
                                                         self.step + 1)
        self.scheduler.step()
        self.cursor += self.effective
        self.step += 1
        return loss, tokens, penalty, grad_norm, skipped

    def _accumulate(self, examples: list, targets: int) -> tuple[float, int]:
        model, device = self.built.model, self.built.device
        loss_sum = torch.zeros((), device=device)
        tokens = 0
        chunks = [examples[i : i + self.micro_batch] for i in range(0, len(examples), self.micro_batch)]
        for n, chunk in enumerate(chunks):
            batch = collate(chunk, self.pad_id, device)
            with autocast(self.built):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            s = self.loss.loss_sum(chunk, batch, logits)
            (s / targets).backward()
            loss_sum += s.detach()
            tokens += batch["tokens"]
            del logits, s, batch
            if n < len(chunks) - 1:
                self.check_stop()  # after the step's last micro-step the step is completed first
        return float(loss_sum), tokens

    # ------------------------------------------------------------------ checkpoints, preemption, the end

    def _checkpoint(self, emit: bool = True) -> Path:
        meta = {"format": 1, "run_id": self.spec.run_id, "method": self.spec.method, "cursor": self.cursor,
                "micro_batch": self.micro_batch, "grad_accum": self.grad_accum, "effective_batch": self.effective,
                "eval_before": self.eval_before, "tokens": self.tokens, "train_seconds": self.train_seconds,
                "oom_injected": self.oom_injected, "lr": self.built.lr, "keys": sorted(self.params),
                "stopped_early": self.stopped_early, **self.dpo.checkpoint_meta()}
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": checkpoint.capture_rng(), **self.dpo.checkpoint_state()}
        path = checkpoint.save(self.ckpt_root, self.step, trainable={k: p.detach() for k, p in self.params.items()},
                               anchor=self.anchor if self.ewc else None, state=state, meta=meta)
        self.last_ckpt, self.last_ckpt_time = (self.step, path), time.monotonic()
        if emit:
            self.emit.emit("checkpoint", step=self.step, path=str(path))
        return path

    def _preempted(self) -> int:
        path = None
        try:
            if self.last_ckpt is not None and self.last_ckpt[0] == self.step:
                path = self.last_ckpt[1]
            elif not self.dry and self.eval_before is not None:
                path = self._checkpoint(emit=True)
        except Exception as exc:  # noqa: BLE001 - still say we stopped; the older checkpoint remains
            traceback.print_exc(file=sys.stderr)
            self.emit.emit("error", message=f"preempted, but the checkpoint failed: {type(exc).__name__}: {exc}")
            return EXIT_FAILED
        self.emit.emit("preempted", step=self.step, checkpoint=str(path) if path else None, signal=self.stop.signum)
        return EXIT_PREEMPTED

    def _finish(self) -> int:
        tokens_per_s = round(self.tokens / self.train_seconds, 1) if self.train_seconds > 0 else None
        if self.dry:
            self.emit.emit("done", step=self.step, final_dir=None, eval=None, tokens_per_s=tokens_per_s,
                           dry_run=True)
            return EXIT_DONE
        if self.last_ckpt is None or self.last_ckpt[0] != self.step:
            self._checkpoint()  # a crash or preemption from here on resumes straight into this final phase
        losses = self._losses()
        recall = self.early.final_recall(self.step)
        probe_after = self.early.final_probe_recall(self.step, self.probe_items)
        fisher, samples = None, 0
        if self.spec.ewc.fisher_samples > 0:
            new, samples = compute_fisher(self.params, lambda: self.evaluation.fisher_losses(
                self.train, self.holdout, self.spec.ewc.fisher_samples, self.spec.hyper.seed), self.check_stop)
            fisher = combine(new, self.prior, self.spec.ewc.decay) if samples else None
        self.check_stop()
        final = write_final(self.out, self.built.model, self.built.tokenizer, self.spec.method, fisher)
        export = ExportCheck()
        if self.spec.method != "full":
            checked = check_adapter(final, self.spec.base_model)
            export = ExportCheck(checked.ok, tuple(checked.problems))
        report = EvalReport(
            run_id=self.spec.run_id, adapter=self.spec.adapter, method=self.spec.method, step=self.step,
            final_dir=str(final), eval=losses, tokens_per_s=tokens_per_s, lr=self.built.lr,
            fisher=str(final / FISHER_FILE) if fisher else None, fisher_samples=samples,
            fisher_combined_with_prior=bool(fisher and self.prior), export=export, recall=recall,
            probe_recall_before=Recall.from_dict(self.eval_before.get("probe_recall")), probe_recall_after=probe_after,
            stopped_early=self.stopped_early, preference=self.dpo.report())
        report.write(self.out)
        self.emit.emit("done", step=self.step, final_dir=str(final), eval=asdict(losses), tokens_per_s=tokens_per_s,
                       fisher=report.fisher, export=report.to_dict()["export"], recall=report.recall_fields(),
                       stopped_early=self.stopped_early, preference=asdict(report.preference))
        checkpoint.remove_all(self.ckpt_root)  # the adapter ships alone; checkpoints are for resuming only
        return EXIT_DONE

    def _losses(self) -> Losses:
        return self.evaluation.losses(self.eval_before, self.holdout, self.probe, self.general, self.micro_batch)
