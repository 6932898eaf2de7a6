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

from _common import difference_row, emit, exit_cleanly_on_sigterm, parser, table
from _executor_timing import add_run_options

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

# Run inside the machine by the package's interpreter, as root, beside _executor_timing.py; prints one JSON object.
INSIDE = r"""
import asyncio, json, os, pathlib, pwd, sys
from _executor_timing import Contender, time_alternately, write_spec
from memwarden.learning.executor import SubprocessExecutor
from memwarden.learning.systemd_bus import BusUnitManager
from memwarden.learning.systemd_executor import SystemdExecutor

BASE, STEPS, REPS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
RUNS = pathlib.Path("/var/lib/memwarden/runs")
USER = pwd.getpwnam("memwarden")


def spec_at_nice(nice):
    def spec(run, steps):
        made = write_spec(run, BASE, steps, nice=nice)
        for path in (run, *run.iterdir()):  # the trainer unit runs as memwarden
            os.chown(path, USER.pw_uid, USER.pw_gid)
        return made
    return spec


def physical_ram():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


async def main():
    units = BusUnitManager()
    # the unit's trainer runs at the unit's Nice=10 already; the subprocess one lowers its own priority as much
    timings = await time_alternately(
        [Contender("subprocess", SubprocessExecutor(RUNS), RUNS, spec_at_nice(10), ram_bytes=2 << 30),
         Contender("systemd", SystemdExecutor(units, physical_ram, 1 << 30), RUNS, spec_at_nice(0), ram_bytes=2 << 30)],
        REPS, STEPS)
    await units.close()
    print(json.dumps(timings.summary("subprocess", "systemd")))

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
            m.write("/tmp/_executor_timing.py", (REPO / "bench" / "_executor_timing.py").read_text())
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
    add_run_options(p, 5, "a demo base already built on the host, bound read-only into the machine")
    args = p.parse_args()
    why = missing_means()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        sys.exit(2)
    base_rootfs()
    r = measure(args)
    rows = [difference_row(f"run of {r['steps']} steps, median of {r['reps']} (s)", r["median_s"], "subprocess",
                           "systemd"),
            ["paired differences, min / median (s)", "", "",
             f"{r['paired_min_s']:+.2f} / {r['paired_median_s']:+.2f} s"],
            difference_row("fastest run (s)", r["fastest_s"], "subprocess", "systemd"),
            difference_row("preempt → trainer exited 75 (s)", r["preempt_s"], "subprocess", "systemd")]
    text = table(["", "subprocess", "systemd", "difference"], rows)
    text += f"\n\nCPU pressure before: {r['cpu_pressure_before']}; after: {r['cpu_pressure_after']}"
    emit("systemd executor vs subprocess", text, r, args.json)
