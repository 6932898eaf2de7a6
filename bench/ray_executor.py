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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import difference_row, emit, exit_cleanly_on_sigterm, fmt, parser, table
from _executor_timing import STAGES, Contender, add_run_options, time_alternately, write_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwarden.learning.executor import SubprocessExecutor
from memwarden.learning.ray_executor import RayExecutor
from support.daemon import BIN
from support.ray_cluster import RayCluster


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
        ray = RayExecutor(cluster.address, {"trainer_gpu": 1}, "cpu", 0, runs)

        def spec(run: Path, steps: int):
            return write_spec(run, str(base), steps, cpu_threads=1)

        async def running(job) -> bool:
            info = await ray.api.info(job.job_id)
            return info is not None and info.status != "PENDING"

        timings = await time_alternately([Contender("subprocess", SubprocessExecutor(runs), runs, spec),
                                          Contender("ray", ray, runs, spec, running=running)], args.reps, args.steps)
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    receiver = timings.last_job["ray"].receiver
    fetched, output = receiver.fetched_bytes, receiver.output_bytes
    return {"steps": args.steps, "reps": args.reps, **timings.summary("subprocess", "ray"),
            "stages_s": timings.stage_medians(), "fetched_bytes": fetched, "output_bytes": output,
            "fetched_saving": 1 - fetched / output if fetched and output else None}


if __name__ == "__main__":
    exit_cleanly_on_sigterm()
    p = parser(__doc__.splitlines()[0])
    add_run_options(p, 3, "a demo base already built (`memwardenctl model init-demo DIR`)")
    args = p.parse_args()
    r = asyncio.run(main(args))
    rows = [difference_row(f"run of {r['steps']} steps, median of {r['reps']} (s)", r["median_s"], "subprocess", "ray"),
            difference_row("preempt → trainer exited 75 (s)", r["preempt_s"], "subprocess", "ray"),
            ["bytes: adapter fetched / output dir at its largest", "—",
             f"{r['fetched_bytes']} / {r['output_bytes']}", f"{100 * (r['fetched_saving'] or 0):.1f} % less"]]
    at = r["stages_s"]
    rows += [[f"stage: {k} (s, median)", fmt(at["subprocess"].get(k), 2), fmt(at["ray"].get(k), 2), ""] for k in STAGES]
    emit("Ray executor vs subprocess", table(["", "subprocess", "ray", "difference"], rows), r, args.json)
