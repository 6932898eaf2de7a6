"""The trainer's unit in a booted machine with real systemd: the template as systemd loads it, the daemon's own
unit still denying W+X memory, and one run started over the real system bus by the systemd executor."""

from __future__ import annotations

import json
import time

from support.nspawn import Machine

TRAINER = "memwarden-train@e2erun-1.service"

# Run by the package's own interpreter, as root (the rootfs has no polkitd to apply the shipped rule): the
# executor writes the launch file, sets MemoryMax, starts the unit and waits for its exit over D-Bus.
START_A_RUN = """
import asyncio, json, os, pathlib, pwd
from memwarden.learning.executor import JobRequest
from memwarden.learning.jobspec import JobSpec
from memwarden.learning.systemd_bus import BusUnitManager
from memwarden.learning.systemd_executor import SystemdExecutor

async def main():
    run_dir = pathlib.Path("/var/lib/memwarden/runs/e2erun-1")
    run_dir.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwnam("memwarden")
    os.chown(run_dir, user.pw_uid, user.pw_gid)  # the trainer writes its progress there as memwarden
    spec = JobSpec("e2erun-1", "alice", "/nonexistent", "lora", str(run_dir), "/t", "/h")
    units = BusUnitManager()
    executor = SystemdExecutor(units, lambda: 8 << 30, 1 << 30)
    job = await executor.start(JobRequest(spec, run_dir / "job.run.json", run_dir, None, ram_bytes=1 << 30),
                               lambda e: None)
    code = await job.wait()
    print(json.dumps({"code": code, "unit": job.placement.unit}))

asyncio.run(main())
"""


def test_the_daemons_unit_keeps_wx_memory_denied_and_the_trainers_allows_it(machine: Machine) -> None:
    daemon = machine.show("memwarden.service", "MemoryDenyWriteExecute", "OOMPolicy")
    assert daemon["MemoryDenyWriteExecute"] == "yes"
    trainer = machine.show(TRAINER, "MemoryDenyWriteExecute", "OOMPolicy", "Nice", "CPUWeight", "IOWeight",
                             "SyslogIdentifier", "IPAddressDeny", "User")
    assert trainer["MemoryDenyWriteExecute"] == "no" and trainer["OOMPolicy"] == "stop"
    assert (trainer["Nice"], trainer["CPUWeight"], trainer["IOWeight"]) == ("10", "20", "20")
    assert trainer["SyslogIdentifier"] == "memwarden-train-e2erun-1" and trainer["User"] == "memwarden"
    assert trainer["IPAddressDeny"] != ""


def test_a_run_started_over_the_bus_runs_as_its_own_unit_and_reports_its_exit(machine: Machine) -> None:
    m = machine
    m.write("/tmp/start_a_run.py", START_A_RUN)
    out = m.run("/opt/memwarden/bin/python", "/tmp/start_a_run.py").stdout
    result = json.loads(out.strip().splitlines()[-1])
    # No base model (and no torch in the package): the trainer fails, and its status comes back through the unit.
    assert result["unit"] == TRAINER and result["code"] not in (0, 75)
    assert m.show(TRAINER, "MemoryMax")["MemoryMax"] == str(int(1.5 * (1 << 30)))  # runtime property kept
    assert journal_tagged(m, "e2erun-1"), "the trainer's stderr reaches the journal tagged with its run"
    assert m.is_active("memwarden.service") == "active"


def journal_tagged(m: Machine, run_id: str, timeout: float = 30.0) -> str:
    """The journal's lines tagged with the run: journald stores a unit's last lines after the unit has exited,
    so each look first asks it to flush (--sync), then reads, until the lines are there or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        m.run("journalctl", "--sync")
        tagged = m.run("journalctl", "--no-pager", "-b", f"MEMWARDEN_RUN={run_id}", "-o", "cat").stdout.strip()
        if tagged or time.monotonic() >= deadline:
            return tagged
        time.sleep(0.5)

