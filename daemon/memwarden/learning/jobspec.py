"""The contract between the daemon and the trainer subprocess (`python -m memwarden.training JOB.json`).

The daemon writes a JobSpec as JSON; the trainer writes one JSON object per line to stdout (a Progress
event), checkpoints under `output_dir/checkpoints/`, and on success leaves `output_dir/final/`
(adapter_model.safetensors + adapter_config.json for lora/qlora, or the full model for `full`), the EWC Fisher
beside the adapter (`fisher.safetensors`), and `output_dir/eval.json`. Exit status: 0 done, 75 preempted
(checkpoint written, resumable with the same spec), 1 failed. Plain data only: no torch here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later

GENERAL_PROBE_FILE = "general_probe.jsonl"  # beside a base model: general-text conversations, never trained on
# Beside a base model, optional: general-text conversations disjoint from the probe, a share of which every run
# trains on (learning.general_rehearsal_fraction).
GENERAL_REHEARSAL_FILE = "general_rehearsal.jsonl"
FULL_FT_LR_RANGE = (1e-5, 5e-5)  # a full fine-tune outside this either cannot learn or forgets everything


@dataclass(frozen=True)
class Hyper:
    lr: float = 2e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    micro_batch: int = 4
    grad_accum: int = 4
    max_steps: int = 100
    warmup_steps: int = 10
    max_seq_len: int = 256
    seed: int = 42
    # Attention and MLP: with attention alone a round of 40 facts is not recalled (BENCHMARKS.md, Recall).
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    eval_every: int = 100  # steps between holdout evaluations during training
    recall_sample: int = 64  # memories greedily decoded per recall measurement (0: no recall measured)
    recall_max_new_tokens: int = 48
    # Early stop: every `recall_every` steps (0: never) recall is measured on a sample of `recall_check_sample` of
    # this run's memories; once it reaches `min_recall`, then on all the recall sample, training stops.
    min_recall: float = 0.0
    recall_every: int = 0
    recall_check_sample: int = 16
    # ... and only once recall on the earlier rounds' probe is back within this share of its recall before the run
    # (the gate's learning.forgetting_epsilon); 1 or more: the probe is not waited for.
    forgetting_epsilon: float = 1.0
    # The DPO stage after the supervised one (training/dpo.py), when the job has a preference file: this many
    # steps (0: none) of the sigmoid DPO loss at temperature dpo_beta, at learning rate dpo_lr.
    dpo_steps: int = 0
    dpo_beta: float = 0.1
    dpo_lr: float = 1e-4
    # How the training file's general-rehearsal lines (tagged "general") are learnt: "ce", their text by
    # cross-entropy as any pair's; "distill", the base's next-token distribution on their assistant tokens, read
    # from the same model with its adapter disabled (training/distill.py).
    general_loss: str = "ce"
    # > 0: the training file holds a pool of general-rehearsal lines, of which each pass over the training pairs
    # draws this many afresh (training/data.Order); 0: every general line is trained at every pass.
    general_per_pass: int = 0


@dataclass(frozen=True)
class Ewc:
    """Online EWC (Schwarz et al. 2018): penalty λ/2 Σ F (θ − θ*)², F decayed by γ and accumulated per run."""

    lam: float = 0.0  # 0 = off
    decay: float = 0.9  # γ
    fisher_samples: int = 64
    prior_fisher: str | None = None  # fisher.safetensors of the version this run starts from


@dataclass(frozen=True)
class SimGpu:
    """The simulated GPU (gpu/simfile.py) a trainer books its lease's memory on, as a real GPU's driver would
    show it: the trainer books itself, so that the daemon never writes the sim file."""

    file: str
    gpu: int
    used_bytes: int


@dataclass(frozen=True)
class JobSpec:
    run_id: str
    adapter: str
    base_model: str  # a local Hugging Face model directory (config, weights, tokenizer)
    method: str  # lora | qlora | full
    output_dir: str
    train_file: str  # JSONL of {"messages": [{"role", "content"}, ...]}
    holdout_file: str
    probe_file: str | None = None  # earlier memories: loss before/after measures forgetting
    recall_file: str | None = None  # this run's new memories, one pair each: recall after training
    general_file: str | None = None  # the base's general-text probe (conversations): loss before/after
    # JSONL of {"prompt", "chosen", "rejected", "memory_id", "heldout"}: the DPO stage's pairs, the held-out ones
    # only measured (learning/preferences.py)
    preference_file: str | None = None
    init_adapter: str | None = None  # the promoted version this run continues from
    hyper: Hyper = field(default_factory=Hyper)
    ewc: Ewc = field(default_factory=Ewc)
    device: str = "cpu"  # cpu | cuda
    checkpoint_every_steps: int = 50
    checkpoint_every_seconds: float = 600.0
    dry_run_steps: int = 0  # run this many steps first and stop (a pre-flight of a long run)
    inject_oom_at_step: int | None = None  # test hook: raise a CUDA-style OOM once at this step
    sim_gpu: SimGpu | None = None  # set when the daemon runs on the sim GPU backend and the run holds a lease
    nice: int = 0  # the trainer lowers its own priority by this much first (a CPU run leaves the cores to serving)
    cpu_threads: int | None = None  # torch's intra-op threads on the CPU (None: torch's own choice)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        hyper = dict(data.pop("hyper", {}) or {})
        if "target_modules" in hyper:
            hyper["target_modules"] = tuple(hyper["target_modules"])
        sim = data.pop("sim_gpu", None)
        return JobSpec(hyper=Hyper(**hyper), ewc=Ewc(**(data.pop("ewc", {}) or {})),
                       sim_gpu=SimGpu(**sim) if sim else None, **data)

    @staticmethod
    def read(path: Path) -> JobSpec:
        return JobSpec.from_dict(json.loads(Path(path).read_text()))


# Progress events, one JSON object per line on the trainer's stdout. Every event has "event" and "t" (wall
# clock); the others carry what their name says:
#   start       {run_id, method, device, steps, micro_batch, grad_accum, resumed_from_step}
#   clamp       {what: "lr", requested, used, range}                   (full fine-tune lr outside the range)
#   step        {step, loss, lr, grad_norm, tokens_per_s, memory_bytes}  (in the DPO stage also stage: "dpo",
#                dpo_step, margin: the mean reward margin, accuracy: the step's share of pairs with a positive one)
#   stage       {stage: "dpo", step, steps, pairs, heldout, beta, lr, accuracy_before, recall_before, resumed}
#   eval        {step, holdout_loss}
#   checkpoint  {step, path}
#   oom_retry   {step, micro_batch, grad_accum, error}                 (halved / doubled, same effective batch;
#                in the DPO stage also stage: "dpo")
#   preempted   {step, checkpoint}                                      (then exit 75)
#   recall      {step, recalled, memories, token_accuracy, sample}          (an early-stop check of recall)
#   done        {step, final_dir, eval: {holdout_loss_before, holdout_loss_after, probe_loss_before,
#                probe_loss_after, general_loss_before, general_loss_after} (None after a dry run), tokens_per_s,
#                recall: EvalReport.recall_fields(), stopped_early, preference: eval_report.Preference}
#   error       {message}
EVENTS = ("start", "clamp", "step", "eval", "recall", "stage", "checkpoint", "oom_retry", "preempted", "done",
          "error")
