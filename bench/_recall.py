"""What the recall benches share: the demo base they train on, the daemon's default learning settings, and one
trainer run as the daemon runs it (`python -m memwarden.training JOB.json`), timed."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from memwarden.config.schema import LearningConfig
from memwarden.learning.eval_report import EvalReport
from memwarden.learning.jobspec import EXIT_DONE, GENERAL_PROBE_FILE, Hyper, JobSpec
from memwarden.learning.preparation import hyper_of


def demo_base(root: Path, given: Path | None) -> Path:
    """`given`, else the default demo base (`memwardenctl model init-demo`'s build, pre-trained) built under root."""
    if given is not None:
        return given
    base = root / "base"
    subprocess.run([sys.executable, "-m", "memwarden.training.demo_model", str(base)], check=True,
                   capture_output=True)
    return base


def default_hyper() -> Hyper:
    """The job spec's hyper-parameters at the schema's learning.* defaults."""
    return hyper_of(LearningConfig())


@dataclass(frozen=True)
class Trained:
    report: EvalReport
    wall_s: float
    cpu_s: float  # the trainer process's user + system time


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_trainer(spec: JobSpec, job_file: Path) -> Trained:
    """Write `spec` to `job_file`, run the trainer on it to its end and read its report; its progress events are
    kept beside the job as events.jsonl; a failed run ends the bench with the trainer's last words."""
    spec.write(job_file)
    started, cpu = time.monotonic(), _children_cpu_seconds()
    proc = subprocess.run([sys.executable, "-m", "memwarden.training", str(job_file)], capture_output=True, text=True)
    wall, cpu = time.monotonic() - started, _children_cpu_seconds() - cpu
    job_file.with_name("events.jsonl").write_text(proc.stdout)
    if proc.returncode != EXIT_DONE:
        raise SystemExit(f"trainer of {spec.run_id} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return Trained(EvalReport.read(Path(spec.output_dir)), round(wall, 1), round(cpu, 1))


def train_on(root: Path, base: Path, name: str, hyper: Hyper, *, general: bool = True, **files: str | int | None
             ) -> Trained:
    """One bench run named `name` under root on `base` with `hyper` and the job spec's file fields given (train_file,
    holdout_file, recall_file, preference_file, cpu_threads…), with the base's general probe unless `general` is
    False; checkpoints never come due, as a bench run is never resumed."""
    out = root / f"run-{name}"
    out.mkdir(parents=True)
    probe = base / GENERAL_PROBE_FILE
    spec = JobSpec(run_id=name, adapter="bench", base_model=str(base), method="lora", output_dir=str(out / "run"),
                   hyper=hyper, general_file=str(probe) if general and probe.is_file() else None,
                   checkpoint_every_steps=100_000, checkpoint_every_seconds=1e9, **files)  # type: ignore[arg-type]
    return run_trainer(spec, out / "job.json")
