"""A run's inputs: its adapter's memories curated into train, holdout and probe files, its preference pairs for
the DPO stage (preferences.py), and its JobSpec.

The run continues from the adapter's active version (its weights and its EWC Fisher). The spec is written
beside the files as job.json and recorded in the run's row with the memories it learns, so that a restart
resumes the same job; the dry run and the real run are variants of it (phase_spec).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from memwarden.config.schema import Config, LearningConfig
from memwarden.learning import curator, preferences
from memwarden.learning.jobspec import GENERAL_PROBE_FILE, GENERAL_REHEARSAL_FILE, Ewc, Hyper, JobSpec, SimGpu
from memwarden.learning.leasing import Granted
from memwarden.learning.runs import RunStore
from memwarden.learning.store import MemoryStore
from memwarden.learning.versions import VersionStore
from memwarden.logs import get_logger

log = get_logger()

SPEC_FILE = "job.json"


def prepare(config: Config, store: MemoryStore, runs: RunStore, versions: VersionStore, run_id: str,
            adapter: str, out: Path, device: str, extra: Mapping[int, Sequence[tuple[str, str]]] | None = None
            ) -> JobSpec:
    """`extra`: question/answer pairs written about new memories (learning.augment, augment.py)."""
    cfg = config.learning
    new = store.for_adapter(adapter, consolidated=False)
    cur = curator.curate(new, store.for_adapter(adapter, consolidated=True),
                         dual=cfg.dual, max_samples=cfg.max_samples, holdout_fraction=cfg.holdout_fraction,
                         replay_fraction=cfg.replay_fraction, replay_all=cfg.replay_all, seed=cfg.seed,
                         extra=extra)
    if not cur.train:
        raise RuntimeError(f"no training pairs for {adapter}: {cur.summary()}")
    out.mkdir(parents=True, exist_ok=True)
    rehearsal = Path(cfg.base_model) / GENERAL_REHEARSAL_FILE
    general_lines = read_general(rehearsal) if cfg.general_rehearsal_fraction > 0 and rehearsal.is_file() else []
    mixed = mix_general(cfg, cur.train, general_lines)
    curator.write_jsonl(out / "train.jsonl", mixed.lines)
    curator.write_jsonl(out / "holdout.jsonl", cur.holdout or cur.train[:1])
    recall = cur.recall  # per trained memory: a trained wording and a held-out one, tagged
    curator.write_jsonl(out / "recall.jsonl", recall, tagged=True)
    probe = None
    if cur.probe:
        curator.write_jsonl(out / "probe.jsonl", cur.probe)
        probe = str(out / "probe.jsonl")
    prefs = preferences.split(new, {*cur.train_ids, *cur.holdout_ids}, cur.holdout_ids, cfg.dpo_holdout_fraction,
                              cfg.seed)
    if prefs.train and cfg.dpo_steps:
        preferences.write(out / preferences.FILE, prefs)
    active = versions.active(adapter)
    prior_fisher = Path(active.path) / "fisher.safetensors" if active else None
    general = Path(cfg.base_model) / GENERAL_PROBE_FILE
    spec = JobSpec(
        run_id=run_id, adapter=adapter, base_model=cfg.base_model, method=cfg.method, output_dir=str(out),
        train_file=str(out / "train.jsonl"), holdout_file=str(out / "holdout.jsonl"), probe_file=probe,
        recall_file=str(out / "recall.jsonl") if recall else None,
        general_file=str(general) if general.is_file() else None,
        preference_file=str(out / preferences.FILE) if prefs.train and cfg.dpo_steps else None,
        init_adapter=active.path if active and cfg.method != "full" else None,
        hyper=hyper_of(cfg, max_steps=step_budget(cfg, mixed.pairs), general_per_pass=mixed.per_pass),
        ewc=Ewc(lam=cfg.ewc_lambda, prior_fisher=str(prior_fisher) if prior_fisher and prior_fisher.exists()
                else None),
        device=device, checkpoint_every_steps=cfg.checkpoint_steps, checkpoint_every_seconds=cfg.checkpoint_interval,
        dry_run_steps=cfg.dry_run_steps)
    spec.write(out / SPEC_FILE)
    runs.update(run_id, spec_path=str(out / SPEC_FILE), output_dir=str(out),
                memory_ids=json.dumps(cur.consolidate_ids), reason=json.dumps(cur.summary()))
    log.info("curated", run=run_id, adapter=adapter, preference_pairs=len(prefs.train),
             preference_heldout=len(prefs.heldout), **{k: v for k, v in cur.summary().items() if k != "adapter"})
    return spec


def hyper_of(cfg: LearningConfig, **run: object) -> Hyper:
    """The trainer's hyper-parameters as learning.* sets them, with `run`'s own (its step budget, its general
    draw) over them: one mapping for the daemon and the benches that train as it does."""
    return dataclasses.replace(Hyper(
        lr=cfg.lr, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, micro_batch=cfg.micro_batch,
        grad_accum=cfg.grad_accum, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
        max_seq_len=cfg.max_seq_len, seed=cfg.seed, target_modules=cfg.target_modules,
        recall_sample=cfg.recall_sample, recall_max_new_tokens=cfg.recall_max_new_tokens, min_recall=cfg.min_recall,
        recall_every=cfg.recall_every, forgetting_epsilon=cfg.forgetting_epsilon, dpo_steps=cfg.dpo_steps,
        dpo_beta=cfg.dpo_beta, dpo_lr=cfg.dpo_lr, general_loss=cfg.general_rehearsal_loss), **run)


@dataclasses.dataclass(frozen=True)
class Mixed:
    lines: list  # the training file's lines: the pairs and the general conversations, tagged
    per_pass: int  # hyper.general_per_pass: the general conversations a pass draws (0: all of them, every pass)
    pairs: int  # what a pass over the training pairs holds, as the trainer's order makes one: the step budget's count


def mix_general(cfg: LearningConfig, train: Sequence[curator.Pair], general: Sequence[dict],
                 fraction: float | None = None) -> Mixed:
    """A run's training pairs with the base's general rehearsal as learning.general_rehearsal_draw draws it, at
    learning.general_rehearsal_fraction (or `fraction`)."""
    share = cfg.general_rehearsal_fraction if fraction is None else fraction
    every_pass = cfg.general_rehearsal_draw == "pass"
    n = curator.general_share(len(train), len(general), share, cfg.max_samples)
    lines = curator.with_general(train, general, share, cfg.max_samples, cfg.seed, every_pass)
    return Mixed(lines, n if every_pass else 0, len(train) + n)


def step_budget(cfg: LearningConfig, pairs: int) -> int:
    """A run's max_steps: learning.max_steps, or learning.max_epochs passes over its `pairs` training pairs when
    that takes more steps. A memory trained in three wordings is three pairs, and replay and general rehearsal
    add theirs: a fixed step count would be fewer passes the more a round holds."""
    return max(cfg.max_steps, math.ceil(cfg.max_epochs * pairs / (cfg.micro_batch * cfg.grad_accum)))


def read_general(path: Path) -> list[dict]:
    """The conversations of a base's general rehearsal file; a line that is not one is skipped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            out.append(obj)
    return out


@dataclasses.dataclass(frozen=True)
class Phase:
    spec: JobSpec
    spec_file: Path
    dry: bool


def phase_spec(spec: JobSpec, out: Path, dry: bool, lease: Granted | None, sim_file: Path | None) -> Phase:
    """The dry run trains `dry_run_steps` into out/dry (thrown away); the real run trains all steps into out.
    On the sim GPU the trainer books its lease's memory itself."""
    sim = SimGpu(str(sim_file), lease.gpu, lease.size) if lease is not None and sim_file is not None else None
    if dry:
        (out / "dry").mkdir(parents=True, exist_ok=True)
        return Phase(dataclasses.replace(spec, output_dir=str(out / "dry"), sim_gpu=sim), out / "dry.json", True)
    return Phase(dataclasses.replace(spec, dry_run_steps=0, sim_gpu=sim), out / "job.run.json", False)
