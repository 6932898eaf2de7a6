"""The systemd executor against the subprocess one, on the demo model: per-run overhead and preemption latency.

Builds the .deb (`make deb`'s script), boots a Debian 12 container with systemd-nspawn (tests/support/nspawn.py,
root needed), installs it, lends the package's venv this venv's train extra (tests/support/nspawn.py's
lend_train_extra: the site-packages bound read-only, a .pth file in the machine only) and builds the demo base
with the package's memwardenctl (or binds the one --base names, read-only). Inside the machine, as root in a
transient unit (Machine.run_in_unit), the package's interpreter runs the same JobSpec
(the default demo Llama, LoRA r 4, micro_batch 2 × grad_accum 1, max_seq_len 64, --steps steps, a checkpoint
every 4) --reps times by each executor, alternating, each rep a fresh run id, timed from `start()` to `wait()`
returning. For systemd that is D-Bus (SetUnitProperties for MemoryMax, StartUnit), the unit's own start and
unit_entry's interpreter, the trainer at the unit's Nice=10 and CPUWeight=20, and the executor's poll of the
unit's state; for subprocess, the trainer as the bench's child, lowering its own priority by 10 (JobSpec.nice)
so that both trainers run at the same nice (on a host with cgroup v1 the machine's systemd applies no CPUWeight,
so the nice is all the priority there is). Overhead = systemd's median − the subprocess median (goal ≤ +0.5 s);
beside it, on a machine whose load swings from run to run, the paired differences (systemd's run − the
subprocess run just before it: min and median) and the difference of the two fastest runs.
Preemption latency: a run of 100000 steps, preempted after its first checkpoint; `preempt()` → `wait()`
returning with 75 (the supervisor releases the lease right after it), for each executor.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt, parser, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.nspawn import (
    SETUP_TIMEOUT,
    base_rootfs,
    build_deb,
    installed,
    lend_train_extra,
    missing_means,
    train_binds,
)

REPO = Path(__file__).resolve().parent.parent
BASE = "/srv/memwarden-demo-base"

# Run inside the machine by the package's interpreter, as root; prints one JSON object.
INSIDE = r"""
import asyncio, json, os, pathlib, pwd, statistics, sys, time
from memwarden.learning.executor import JobRequest, SubprocessExecutor
from memwarden.learning.jobspec import Hyper, JobSpec
from memwarden.learning.systemd_bus import BusUnitManager
from memwarden.learning.systemd_executor import SystemdExecutor

BASE, STEPS, REPS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
RUNS = pathlib.Path("/var/lib/memwarden/runs")
USER = pwd.getpwnam("memwarden")


def spec(name, steps, nice):
    run = RUNS / name
    run.mkdir(parents=True, exist_ok=True)
    pairs = [{"messages": [{"role": "user", "content": f"What is fact {i}?"},
                           {"role": "assistant", "content": f"Fact {i} is {i * 7} apples."}]} for i in range(16)]
    (run / "train.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    (run / "holdout.jsonl").write_text(json.dumps(pairs[0]) + "\n")
    for path in (run, *run.iterdir()):  # the trainer unit runs as memwarden
        os.chown(path, USER.pw_uid, USER.pw_gid)
    return JobSpec(name, "alice", BASE, "lora", str(run), str(run / "train.jsonl"), str(run / "holdout.jsonl"),
                   hyper=Hyper(max_steps=steps, micro_batch=2, grad_accum=1, max_seq_len=64, warmup_steps=2, rank=4,
                               alpha=8, lr=3e-3, recall_sample=0),
                   checkpoint_every_steps=4, nice=nice)


async def one(executor, nice, name, steps, preempt=False):
    s = spec(name, steps, nice)
    run = RUNS / name
    checkpointed = asyncio.Event()
    t0 = time.monotonic()
    job = await executor.start(JobRequest(s, run / "job.run.json", run, None, ram_bytes=2 << 30),
                               lambda e: e.get("event") == "checkpoint" and checkpointed.set())
    waiting = asyncio.get_running_loop().create_task(job.wait())  # a systemd job reads its progress as it waits
    if preempt:
        await checkpointed.wait()
        t0 = time.monotonic()
        job.preempt()
    code = await waiting
    return time.monotonic() - t0, code


async def main():
    units = BusUnitManager()
    # (executor, the trainer's own nice): the unit's trainer runs at the unit's Nice=10 already
    executors = {"subprocess": (SubprocessExecutor(RUNS), 10),
                 "systemd": (SystemdExecutor(units, lambda: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                                             1 << 30), 0)}
    times = {label: [] for label in executors}
    for rep in range(REPS):
        for label, (ex, nice) in executors.items():
            took, code = await one(ex, nice, f"{label}-{rep}", STEPS)
            assert code == 0, (label, rep, code)
            times[label].append(took)
    preempt = {}
    for label, (ex, nice) in executors.items():
        took, code = await one(ex, nice, f"{label}-preempt", 100_000, preempt=True)
        assert code == 75, (label, code)
        preempt[label] = took
    await units.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"times_s": times, "median_s": med, "overhead_s": med["systemd"] - med["subprocess"],
                      "preempt_s": preempt}))

asyncio.run(main())
"""


def cpu_pressure() -> str:
    """/proc/pressure/cpu's `some` line: how much other work wanted the CPU meanwhile."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "unavailable"


def measure(args: Any) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mwbench-systemd-") as tmp:
        deb = build_deb(REPO, Path(tmp))
        binds = [*train_binds(), *([(args.base.resolve(), BASE)] if args.base else [])]
        with installed(deb, binds) as m:
            why = lend_train_extra(m)
            if why:
                raise SystemExit(f"cannot run: {why}")
            if args.base is None:
                m.run_in_unit("/usr/bin/memwardenctl", "model", "init-demo", BASE, env={"HF_HUB_OFFLINE": "1"},
                              timeout=300)
            m.write("/tmp/bench.py", INSIDE)
            before = cpu_pressure()
            out = m.run_in_unit("/opt/memwarden/bin/python", "/tmp/bench.py", BASE, str(args.steps),
                                str(args.reps), env={"HF_HUB_OFFLINE": "1"}, timeout=SETUP_TIMEOUT).stdout
            after = cpu_pressure()
    r = json.loads(out.strip().splitlines()[-1])
    paired = sorted(b - a for a, b in zip(r["times_s"]["subprocess"], r["times_s"]["systemd"], strict=True))
    return {**r, "paired_s": paired, "paired_min_s": paired[0], "paired_median_s": statistics.median(paired),
            "fastest_s": {k: min(v) for k, v in r["times_s"].items()}, "steps": args.steps, "reps": args.reps,
            "cpu_pressure_before": before, "cpu_pressure_after": after}


if __name__ == "__main__":
    exit_cleanly_on_sigterm()
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--base", type=Path, help="a demo base already built on the host, bound read-only into the machine")
    args = p.parse_args()
    why = missing_means()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        sys.exit(2)
    base_rootfs()
    r = measure(args)
    rows = [[f"run of {r['steps']} steps, median of {r['reps']} (s)", fmt(r["median_s"]["subprocess"], 2),
             fmt(r["median_s"]["systemd"], 2), f"{r['overhead_s']:+.2f} s"],
            ["paired differences, min / median (s)", "", "",
             f"{r['paired_min_s']:+.2f} / {r['paired_median_s']:+.2f} s"],
            ["fastest run (s)", fmt(r["fastest_s"]["subprocess"], 2), fmt(r["fastest_s"]["systemd"], 2),
             f"{r['fastest_s']['systemd'] - r['fastest_s']['subprocess']:+.2f} s"],
            ["preempt → trainer exited 75 (s)", fmt(r["preempt_s"]["subprocess"], 2),
             fmt(r["preempt_s"]["systemd"], 2),
             f"{r['preempt_s']['systemd'] - r['preempt_s']['subprocess']:+.2f} s"]]
    text = table(["", "subprocess", "systemd", "difference"], rows)
    text += f"\n\nCPU pressure before: {r['cpu_pressure_before']}; after: {r['cpu_pressure_after']}"
    emit("systemd executor vs subprocess", text, r, args.json)
