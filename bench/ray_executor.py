"""The Ray executor against the subprocess one, on the demo model: per-run overhead, bytes fetched, preemption.

A two-node Ray cluster on this machine (tests/support/ray_cluster.py: a head without the resource, a worker
with `trainer_gpu`, one CPU each, in a loopback-only network namespace). The same JobSpec (the default demo
Llama from `memwardenctl model init-demo`, LoRA r 4, micro_batch 2 × grad_accum 1, max_seq_len 64, --steps
steps, a checkpoint every 4, one torch thread: the worker is a one-CPU node, and a trainer with a thread per core
on a loaded machine trains several times slower, which would be measured instead of the executor) is run --reps
times by each executor, alternating, each rep a fresh run id, timed
from `start()` to `wait()` returning (for Ray: submit, runtime_env set-up, the job, the adapter home and
verified). Overhead = Ray's median − the subprocess median (goal ≤ +5 s).
Bytes: the adapter files the daemon received against the run's output directory on the node at its largest
(at a checkpoint: adapter, optimizer state, RNG), which shipping the directory would cost (goal ≥ 90 % less).
Preemption latency: a run of 100000 steps, preempted after its first checkpoint; `preempt()` → `wait()`
returning (the lease is released right after it), for each executor.
Stages (medians, seconds from `start()`): `start()` returned (Ray: the runtime_env packaged and uploaded, the job
submitted), the job seen RUNNING (Ray's status read every 50 ms beside the run), the trainer's `start` event
written (its clock) and received, its `done` event written and received, and `wait()` returned; where the two
executors part is where Ray's time goes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, exit_cleanly_on_sigterm, fmt, parser, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwarden.learning.executor import JobRequest, SubprocessExecutor
from memwarden.learning.jobspec import Hyper, JobSpec
from memwarden.learning.ray_executor import RayExecutor
from support.daemon import BIN
from support.ray_cluster import RayCluster

STAGES = ("start() returned", "job RUNNING", "start written", "start received", "done written", "done received",
          "wait() returned")


def spec(run: Path, base: Path, steps: int) -> JobSpec:
    run.mkdir(parents=True, exist_ok=True)
    pairs = [{"messages": [{"role": "user", "content": f"What is fact {i}?"},
                           {"role": "assistant", "content": f"Fact {i} is {i * 7} apples."}]} for i in range(16)]
    (run / "train.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    (run / "holdout.jsonl").write_text(json.dumps(pairs[0]) + "\n")
    return JobSpec(run.name, "alice", str(base), "lora", str(run), str(run / "train.jsonl"), str(run / "holdout.jsonl"),
                   hyper=Hyper(max_steps=steps, micro_batch=2, grad_accum=1, max_seq_len=64, warmup_steps=2, rank=4,
                               alpha=8, lr=3e-3, recall_sample=0),
                   checkpoint_every_steps=4, cpu_threads=1)


async def one(executor, runs: Path, name: str, base: Path, steps: int, preempt: bool = False):
    s = spec(runs / name, base, steps)
    checkpointed = asyncio.Event()
    stages: dict[str, float] = {}
    t0 = time.monotonic()
    wall0 = time.time()

    def on_event(e):
        kind = e.get("event")
        if kind == "checkpoint":
            checkpointed.set()
        if kind in ("start", "done") and f"{kind} written" not in stages:
            stages[f"{kind} written"] = e["t"] - wall0
            stages[f"{kind} received"] = time.monotonic() - t0

    job = await executor.start(JobRequest(s, runs / name / "job.run.json", runs / name, None), on_event)
    stages["start() returned"] = time.monotonic() - t0
    watch = asyncio.get_running_loop().create_task(running(executor, job, t0, stages))
    if preempt:
        await checkpointed.wait()
        t0 = time.monotonic()
        job.preempt()
    code = await job.wait()
    took = time.monotonic() - t0
    stages["wait() returned"] = took
    watch.cancel()
    return took, code, job, stages


async def running(executor, job, t0: float, stages: dict[str, float]) -> None:
    """When the Ray job is first seen RUNNING (its status read every 50 ms); nothing for a subprocess."""
    api = getattr(executor, "api", None)
    while api is not None:
        info = await api.info(job.job_id)
        if info is not None and info.status != "PENDING":
            stages["job RUNNING"] = time.monotonic() - t0
            return
        await asyncio.sleep(0.05)


async def main(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mwbench-ray-"))
    base = args.base or work / "base"
    if args.base is None:
        subprocess.run([BIN / "memwardenctl", "model", "init-demo", str(base)], check=True, capture_output=True)
    cluster = RayCluster(work / "node-runs")
    try:
        cluster.start_head()
        cluster.add_worker()
        runs = work / "runs"
        sub, ray = SubprocessExecutor(runs), RayExecutor(cluster.address, {"trainer_gpu": 1}, "cpu", 0, runs)
        times: dict[str, list[float]] = {"subprocess": [], "ray": []}
        stages: dict[str, list[dict[str, float]]] = {"subprocess": [], "ray": []}
        fetched = output = None
        for rep in range(args.reps):
            for label, ex in (("subprocess", sub), ("ray", ray)):
                took, code, job, marks = await one(ex, runs, f"{label}-{rep}", base, args.steps)
                assert code == 0, (label, code)
                times[label].append(took)
                stages[label].append(marks)
                if label == "ray":
                    fetched, output = job.receiver.fetched_bytes, job.receiver.output_bytes
        preempt = {}
        for label, ex in (("subprocess", sub), ("ray", ray)):
            took, code, _, _ = await one(ex, runs, f"{label}-preempt", base, 100_000, preempt=True)
            assert code == 75, (label, code)
            preempt[label] = took
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    stage_med = {label: {k: round(statistics.median(m[k] for m in marks if k in m), 2)
                         for k in STAGES if any(k in m for m in marks)} for label, marks in stages.items()}
    return {"steps": args.steps, "reps": args.reps, "times_s": times, "median_s": med, "stages_s": stage_med,
            "overhead_s": med["ray"] - med["subprocess"], "fetched_bytes": fetched, "output_bytes": output,
            "fetched_saving": 1 - fetched / output if fetched and output else None, "preempt_s": preempt}


if __name__ == "__main__":
    exit_cleanly_on_sigterm()
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--base", type=Path, help="a demo base already built (`memwardenctl model init-demo DIR`)")
    args = p.parse_args()
    r = asyncio.run(main(args))
    rows = [[f"run of {r['steps']} steps, median of {r['reps']} (s)", fmt(r["median_s"]["subprocess"], 2),
             fmt(r["median_s"]["ray"], 2), f"+{r['overhead_s']:.2f} s"],
            ["preempt → trainer exited 75 (s)", fmt(r["preempt_s"]["subprocess"], 2), fmt(r["preempt_s"]["ray"], 2),
             f"+{r['preempt_s']['ray'] - r['preempt_s']['subprocess']:.2f} s"],
            ["bytes: adapter fetched / output dir at its largest", "—",
             f"{r['fetched_bytes']} / {r['output_bytes']}", f"{100 * (r['fetched_saving'] or 0):.1f} % less"]]
    at = r["stages_s"]
    rows += [[f"stage: {k} (s, median)", fmt(at["subprocess"].get(k), 2), fmt(at["ray"].get(k), 2), ""] for k in STAGES]
    emit("Ray executor vs subprocess", table(["", "subprocess", "ray", "difference"], rows), r, args.json)
