"""The run the executor benches time and the loop that times executors against each other on it.

bench/ray_executor.py imports it on the host; bench/systemd_executor.py copies it into its nspawn machine beside
the script the machine runs, so it needs nothing but the standard library and memwarden.

Each executor runs the same JobSpec (the demo Llama, LoRA r 4, micro_batch 2 × grad_accum 1, max_seq_len 64, a
checkpoint every 4 steps) --reps times, the executors alternating so that a swing in the machine's load falls on
both, each rep a fresh run id, timed from `start()` to `wait()` returning. Then each runs PREEMPT_STEPS steps,
preempted after its first checkpoint, timed from `preempt()` to `wait()` returning with 75.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwarden.learning.executor import JobRequest
from memwarden.learning.jobspec import Hyper, JobSpec

STAGES = ("start() returned", "job RUNNING", "start written", "start received", "done written", "done received",
          "wait() returned")
PREEMPT_STEPS = 100_000
PREEMPTED = 75  # the trainer's exit code when it stopped at a checkpoint because it was asked to


def add_run_options(p: argparse.ArgumentParser, reps: int, base_help: str) -> None:
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--base", type=Path, help=base_help)


def write_spec(run: Path, base: str, steps: int, **options: Any) -> JobSpec:
    """The bench's JobSpec for a run in `run`, its sixteen training pairs and one holdout pair written there;
    `options` are JobSpec's own (nice, cpu_threads)."""
    run.mkdir(parents=True, exist_ok=True)
    pairs = [{"messages": [{"role": "user", "content": f"What is fact {i}?"},
                           {"role": "assistant", "content": f"Fact {i} is {i * 7} apples."}]} for i in range(16)]
    (run / "train.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    (run / "holdout.jsonl").write_text(json.dumps(pairs[0]) + "\n")
    return JobSpec(run.name, "alice", base, "lora", str(run), str(run / "train.jsonl"), str(run / "holdout.jsonl"),
                   hyper=Hyper(max_steps=steps, micro_batch=2, grad_accum=1, max_seq_len=64, warmup_steps=2, rank=4,
                               alpha=8, lr=3e-3, recall_sample=0),
                   checkpoint_every_steps=4, **options)


@dataclass(frozen=True)
class Contender:
    """One executor under test. `spec` makes a run's JobSpec from its directory and steps; `running`, where the
    executor has a job status to read, says whether the job has left its queue."""

    label: str
    executor: Any
    runs: Path
    spec: Callable[[Path, int], JobSpec]
    ram_bytes: int | None = None
    running: Callable[[Any], Awaitable[bool]] | None = None


@dataclass(frozen=True)
class Timed:
    took: float
    code: int
    job: Any
    stages: dict[str, float]  # seconds from `start()` at which the run reached each of STAGES it reached


async def time_one(contender: Contender, name: str, steps: int, preempt: bool = False) -> Timed:
    run = contender.runs / name
    spec = contender.spec(run, steps)
    checkpointed = asyncio.Event()
    stages: dict[str, float] = {}
    t0 = time.monotonic()
    wall0 = time.time()

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "checkpoint":
            checkpointed.set()
        if kind in ("start", "done") and f"{kind} written" not in stages:
            stages[f"{kind} written"] = event["t"] - wall0  # the trainer's clock, hence the wall clock
            stages[f"{kind} received"] = time.monotonic() - t0

    job = await contender.executor.start(JobRequest(spec, run / "job.run.json", run, None, contender.ram_bytes),
                                         on_event)
    stages["start() returned"] = time.monotonic() - t0
    loop = asyncio.get_running_loop()
    watch = loop.create_task(_seen_running(contender, job, t0, stages))
    waiting = loop.create_task(job.wait())  # a systemd job reads its progress as it waits
    if preempt:
        # a job that ends before its first checkpoint is reported by its exit code instead of awaited forever
        checkpoint = loop.create_task(checkpointed.wait())
        await asyncio.wait([checkpoint, waiting], return_when=asyncio.FIRST_COMPLETED)
        checkpoint.cancel()
        if not waiting.done():
            t0 = time.monotonic()
            job.preempt()
    code = await waiting
    took = time.monotonic() - t0
    stages["wait() returned"] = took
    watch.cancel()
    return Timed(took, code, job, stages)


async def _seen_running(contender: Contender, job: Any, t0: float, stages: dict[str, float]) -> None:
    """When the job is first seen out of its queue, its status read every 50 ms; nothing without a status."""
    while contender.running is not None:
        if await contender.running(job):
            stages["job RUNNING"] = time.monotonic() - t0
            return
        await asyncio.sleep(0.05)


@dataclass
class Timings:
    times_s: dict[str, list[float]] = field(default_factory=dict)
    stages_s: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    last_job: dict[str, Any] = field(default_factory=dict)  # each executor's last finished run
    preempt_s: dict[str, float] = field(default_factory=dict)

    def summary(self, baseline: str, other: str) -> dict[str, Any]:
        """The runs, their medians, the other's median overhead over the baseline's, the preemption latencies."""
        med = {k: statistics.median(v) for k, v in self.times_s.items()}
        return {"times_s": self.times_s, "median_s": med, "overhead_s": med[other] - med[baseline],
                "preempt_s": self.preempt_s}

    def stage_medians(self) -> dict[str, dict[str, float]]:
        return {label: {k: round(statistics.median(m[k] for m in marks if k in m), 2)
                        for k in STAGES if any(k in m for m in marks)} for label, marks in self.stages_s.items()}


async def time_alternately(contenders: list[Contender], reps: int, steps: int) -> Timings:
    timings = Timings({c.label: [] for c in contenders}, {c.label: [] for c in contenders})
    for rep in range(reps):
        for c in contenders:
            timed = await time_one(c, f"{c.label}-{rep}", steps)
            assert timed.code == 0, (c.label, rep, timed.code)
            timings.times_s[c.label].append(timed.took)
            timings.stages_s[c.label].append(timed.stages)
            timings.last_job[c.label] = timed.job
    for c in contenders:
        timed = await time_one(c, f"{c.label}-preempt", PREEMPT_STEPS, preempt=True)
        assert timed.code == PREEMPTED, (c.label, timed.code)
        timings.preempt_s[c.label] = timed.took
    return timings
