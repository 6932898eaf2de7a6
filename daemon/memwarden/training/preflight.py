"""What can be decided before torch is imported (2+ s): is the spec valid, and is this run already done?

`python -m memwarden.training` calls both first, so a bad spec is refused, and a finished run reported again,
within a fraction of a second. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from memwarden.learning.eval_report import EvalReport
from memwarden.learning.jobspec import JobSpec

METHODS = ("lora", "qlora", "full")
GENERAL_LOSSES = ("ce", "distill")


class GiveUp(Exception):
    """A clear reason to fail (exit 1) without a traceback."""


def validate(spec: JobSpec) -> None:
    """Raises GiveUp naming every problem of the spec."""
    h, problems = spec.hyper, []
    if spec.method not in METHODS:
        problems.append(f"method must be one of {list(METHODS)}, got {spec.method!r}")
    if not (Path(spec.base_model) / "config.json").is_file():
        problems.append(f"base_model {spec.base_model} is not a model directory (no config.json)")
    for name in ("train_file", "holdout_file", "probe_file", "recall_file", "general_file", "preference_file",
                 "init_adapter"):
        value = getattr(spec, name)
        if value is not None and not Path(value).exists():
            problems.append(f"{name} {value} does not exist")
    if spec.device != "cpu" and not spec.device.startswith("cuda"):
        problems.append(f"device must be cpu or cuda, got {spec.device!r}")
    for name, value, low in (
        ("micro_batch", h.micro_batch, 1),
        ("grad_accum", h.grad_accum, 1),
        ("max_steps", h.max_steps, 1),
        ("warmup_steps", h.warmup_steps, 0),
        ("max_seq_len", h.max_seq_len, 2),
        ("rank", h.rank, 1),
        ("alpha", h.alpha, 1),
        ("eval_every", h.eval_every, 0),
        ("seed", h.seed, 0),
        ("recall_sample", h.recall_sample, 0),
        ("recall_max_new_tokens", h.recall_max_new_tokens, 1),
        ("recall_every", h.recall_every, 0),
        ("recall_check_sample", h.recall_check_sample, 1),
        ("dpo_steps", h.dpo_steps, 0),
        ("general_per_pass", h.general_per_pass, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"hyper.{name} must be an integer ≥ {low}, got {value!r}")
    for name, value in (("lr", h.lr), ("dpo_lr", h.dpo_lr), ("dpo_beta", h.dpo_beta)):
        if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
            problems.append(f"hyper.{name} must be positive, got {value!r}")
    if not (isinstance(h.min_recall, int | float) and 0 <= h.min_recall <= 1):
        problems.append(f"hyper.min_recall must be in [0, 1], got {h.min_recall!r}")
    if not (isinstance(h.forgetting_epsilon, int | float) and h.forgetting_epsilon >= 0):
        problems.append(f"hyper.forgetting_epsilon must be ≥ 0, got {h.forgetting_epsilon!r}")
    if not (isinstance(h.dropout, int | float) and 0 <= h.dropout < 1):
        problems.append(f"hyper.dropout must be in [0, 1), got {h.dropout!r}")
    if h.general_loss not in GENERAL_LOSSES:
        problems.append(f"hyper.general_loss must be one of {list(GENERAL_LOSSES)}, got {h.general_loss!r}")
    if not h.target_modules and spec.method != "full":
        problems.append("hyper.target_modules is empty")
    if spec.ewc.lam < 0 or not 0 <= spec.ewc.decay <= 1 or spec.ewc.fisher_samples < 0:
        problems.append("ewc: lam ≥ 0, 0 ≤ decay ≤ 1 and fisher_samples ≥ 0 are required")
    if spec.dry_run_steps < 0 or spec.checkpoint_every_steps < 0 or spec.checkpoint_every_seconds < 0:
        problems.append("dry_run_steps, checkpoint_every_steps and checkpoint_every_seconds must not be negative")
    if problems:
        raise GiveUp("invalid job spec: " + "; ".join(problems))


def already_done(spec: JobSpec) -> dict[str, Any] | None:
    """The "done" fields of a run that already finished (final/ and eval.json in place, same run_id), else None."""
    report = None if spec.dry_run_steps > 0 else EvalReport.finished(Path(spec.output_dir), spec.run_id)
    if report is None:
        return None
    return {"step": report.step, "final_dir": report.final_dir, "eval": asdict(report.eval),
            "tokens_per_s": report.tokens_per_s}
