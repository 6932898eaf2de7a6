"""The trainer's unit in a booted machine with real systemd: the template as systemd loads it, the daemon's own
unit still denying W+X memory, one run started over the real system bus by the systemd executor, and real runs
of the demo model that the installed daemon starts itself (as the memwarden user, allowed by the shipped polkit
rule): one whose trainer is killed as the OOM killer kills it, one that outlives `systemctl restart memwarden`.

The package's venv has no torch: for the real runs it borrows the test venv's site-packages (the train extra),
bound read-only into the machine and named by a .pth file written in this machine only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.daemon import toml
from support.memories import FACTS
from support.nspawn import Machine, installed, lend_train_extra, train_binds
from support.ollama_double.manager import wait_until
from support.tiny_run import tiny_learning

# Booting and installing are bounded by tests/support/nspawn.py; a run of the demo model in the machine takes
# tens of seconds (its trainer at CPUWeight=20 and Nice=10 on a shared machine).
pytestmark = pytest.mark.timeout(600, func_only=True)

TRAINER = "memwarden-train@e2erun-1.service"
BASE = "/srv/memwarden-demo-base"
RUN_TIMEOUT = 420.0
# A unit that allocates this much under this MemoryMax ends only if the machine's systemd can cap memory.
PROBE_ALLOC_MIB, PROBE_MAX = 256, "64M"

# Run by the package's own interpreter as the memwarden user, as the daemon would: the executor writes the launch
# file, sets MemoryMax, starts the unit (as the shipped polkit rule allows) and waits for its exit over D-Bus.
START_A_RUN = """
import asyncio, json, pathlib
from memwarden.learning.executor import JobRequest
from memwarden.learning.jobspec import JobSpec
from memwarden.learning.systemd_bus import BusUnitManager
from memwarden.learning.systemd_executor import SystemdExecutor

async def main():
    run_dir = pathlib.Path("/var/lib/memwarden/runs/e2erun-1")
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = JobSpec("e2erun-1", "alice", "/nonexistent", "lora", str(run_dir), "/t", "/h")
    units = BusUnitManager()
    executor = SystemdExecutor(units, lambda: 8 << 30, 1 << 30)
    job = await executor.start(JobRequest(spec, run_dir / "job.run.json", run_dir, None, ram_bytes=1 << 30),
                               lambda e: None)
    code = await job.wait()
    print(json.dumps({"code": code, "unit": job.placement.unit}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def machine(deb: Path) -> Iterator[Machine]:
    with installed(deb, train_binds()) as m:
        yield m


@pytest.fixture(scope="module")
def training(machine: Machine) -> Machine:
    """The machine's package able to train (the train extra borrowed from the test venv), and the demo base
    built by the package's own memwardenctl."""
    why = lend_train_extra(machine)
    if why:
        pytest.skip(why)
    # Unpretrained: these runs test the unit's machinery with the recall gate off (tiny_learning), not recall.
    machine.run_in_unit("/usr/bin/memwardenctl", "model", "init-demo", BASE, "--pretrain-steps", "0",
                        env={"HF_HUB_OFFLINE": "1"}, timeout=300)
    return machine


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
    out = m.run("runuser", "-u", "memwarden", "--", "/opt/memwarden/bin/python", "/tmp/start_a_run.py").stdout
    result = json.loads(out.strip().splitlines()[-1])
    # No base model at /nonexistent: the trainer fails, and its status comes back through the unit.
    assert result["unit"] == TRAINER and result["code"] not in (0, 75)
    assert m.show(TRAINER, "MemoryMax")["MemoryMax"] == str(int(1.5 * (1 << 30)))  # runtime property kept
    assert journal_tagged(m, "e2erun-1"), "the trainer's stderr reaches the journal tagged with its run"
    assert m.is_active("memwarden.service") == "active"


def test_a_trainer_past_its_memory_max_is_killed_and_retried_with_a_halved_micro_batch(training: Machine) -> None:
    m = training
    why = memory_max_unenforced(m)
    if why:
        pytest.skip(why)
    # MemoryMax is 1.5 × learning.lease_size = 1080 MiB (1.13 GB). With this demo base, a trainer on 1024-token
    # sequences peaks at about 1.26 GB of RSS at micro-batch 32 and 0.91 GB at 16; in a memory cgroup capped at
    # 1080 MiB, the one at 32 is OOM-killed and the one at 16 charges at most 0.73 GB.
    configure(m, max_steps=2, micro_batch=32, grad_accum=1, max_seq_len=1024, lease_size="720MiB",
              checkpoint_steps=1, recall_sample=2)
    daemon = m.show("memwarden.service", "NRestarts", "MainPID")
    long_answer = " ".join(f"fact apple{j}" for j in range(600))
    run_id = start_run(m, "dave", [("conversation", f"What is fact {i}?", f"{i}: {long_answer}") for i in range(40)])
    run = eventually(lambda: ended(m, run_id), RUN_TIMEOUT, f"run {run_id} to end")
    assert run["state"] in ("promoted", "rejected"), run
    unit = f"memwarden-train@{run_id}.service"
    said = pid1_says(m, unit)
    assert any("oom-kill" in line or "OOM killer" in line for line in said), said
    assert_retried_halved(m, run_id, killed=(32, 1), retried=(16, 2))
    assert m.show("memwarden.service", "NRestarts", "MainPID") == daemon


def test_a_trainer_killed_as_the_oom_killer_kills_is_retried_with_a_halved_micro_batch(training: Machine) -> None:
    """The kernel's OOM killer ends a trainer with SIGKILL; here the test sends it, mid-run, after a checkpoint,
    so the path from the unit's exit to the retry is the real one wherever MemoryMax is enforced or not."""
    m = training
    configure(m, max_steps=40, micro_batch=4, grad_accum=1)
    daemon = m.show("memwarden.service", "NRestarts", "MainPID")
    run_id = start_run(m, "carol")
    unit = f"memwarden-train@{run_id}.service"
    eventually(lambda: checkpointed(m, run_id), RUN_TIMEOUT, f"a checkpoint of run {run_id}")
    entry = m.main_pid(unit)  # unit_entry; the trainer is its child
    trainer = int(m.run("pgrep", "-P", str(entry), "-f", "memwarden.training").stdout.split()[0])
    m.run("kill", "-KILL", str(trainer))
    run = eventually(lambda: ended(m, run_id), RUN_TIMEOUT, f"run {run_id} to end")
    assert run["state"] == "promoted", ended_why(m, run)
    assert any("exited with status 137" in line for line in journal_tagged(m, run_id).splitlines())
    assert_retried_halved(m, run_id, killed=(4, 1), retried=(2, 2))
    (start,) = [e for e in progress(m, run_id) if e["event"] == "start"]
    assert start["resumed_from_step"] >= 4  # from the killed trainer's checkpoint (every 4 steps), not from scratch
    assert m.show("memwarden.service", "NRestarts", "MainPID") == daemon  # the daemon was never touched


def test_a_daemon_restart_leaves_the_trainer_running_and_the_next_daemon_adopts_it(training: Machine) -> None:
    m = training
    steps = 200
    configure(m, max_steps=steps)
    run_id = start_run(m, "bob")
    unit = f"memwarden-train@{run_id}.service"
    eventually(lambda: checkpointed(m, run_id), RUN_TIMEOUT, f"a checkpoint of run {run_id}")
    trainer, daemon = m.main_pid(unit), m.main_pid()
    m.run("systemctl", "restart", "memwarden.service")
    assert m.main_pid() != daemon
    assert (m.is_active(unit), m.main_pid(unit)) == ("active", trainer)  # the same trainer, still running
    run = eventually(lambda: ended(m, run_id), RUN_TIMEOUT, f"run {run_id} to end")
    assert run["state"] == "promoted", ended_why(m, run)
    adopted = [e for e in own_entries(m, "trainer unit adopted") if e.get("UNIT") == unit]
    assert [int(str(e["_PID"])) for e in adopted] == [m.main_pid()]
    # One trainer from step 0 to the end: nothing restarted from scratch, no step lost or done twice.
    events = progress(m, run_id)
    starts = [e for e in events if e["event"] == "start"]
    assert [s["resumed_from_step"] for s in starts] == [0]
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, steps + 1))
    assert events[-1] == {"event": "unit_exit", "code": 0}


# ---- helpers ---------------------------------------------------------------------------------------------------

def configure(m: Machine, **learning: Any) -> None:
    """The daemon trains the demo base with the systemd executor; runs start only when asked (train start)."""
    sections = {"daemon": {"sample_interval": "500ms"}, "gpu": {"backend": "none"}, "ollama": {"url": ""},
                "learning": tiny_learning(Path(BASE), **{"executor": "systemd", "ollama_base": "", "device": "cpu",
                                                         "importance_threshold": 1_000_000, "dry_run_steps": 0,
                                                         **learning})}
    m.write("/etc/memwarden/memwarden.toml", toml(sections))
    m.run("systemctl", "restart", "memwarden.service")


def ctl(m: Machine, *args: str) -> Any:
    return json.loads(m.run("memwardenctl", "--json", *args).stdout)


def start_run(m: Machine, adapter: str, memories: list[tuple[str, str, str | None]] | None = None) -> str:
    lines = [json.dumps({"profile": adapter, "kind": kind, "content": content, "response": response,
                         "importance": 5}) for kind, content, response in (memories or FACTS)]
    m.write(f"/tmp/{adapter}.jsonl", "\n".join(lines) + "\n")
    m.run("memwardenctl", "memories", "import", f"/tmp/{adapter}.jsonl", timeout=120)
    return str(ctl(m, "train", "start", adapter)["id"])


def ended_why(m: Machine, run: dict[str, Any]) -> str:
    """A run that did not end as expected, whole, with what the daemon logged of it: the state alone says little."""
    logged = m.run("journalctl", "--no-pager", "-b", "-u", "memwarden.service", "-n", "60", "-o", "cat").stdout
    return f"{json.dumps(run, indent=1)}\n--- the daemon's last lines:\n{logged}"


def ended(m: Machine, run_id: str) -> dict[str, Any] | None:
    runs = ctl(m, "call", "train.history", json.dumps({"limit": 20}))
    run = next((r for r in runs if r["id"] == run_id), None)
    return run if run and run["state"] in ("promoted", "rejected", "failed", "cancelled") else None


def progress(m: Machine, run_id: str) -> list[dict[str, Any]]:
    text = m.run("cat", f"/var/lib/memwarden/runs/{run_id}/progress.jsonl", check=False).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def checkpointed(m: Machine, run_id: str) -> bool:
    if any(e["event"] == "checkpoint" for e in progress(m, run_id)):
        return True
    run = ended(m, run_id)
    assert run is None, f"run {run_id} ended before its first checkpoint: {run}"
    return False


def assert_retried_halved(m: Machine, run_id: str, killed: tuple[int, int], retried: tuple[int, int]) -> None:
    """The daemon marked the kill (its oom_retry line, with the run) and started the next trainer with the
    micro-batch halved and grad_accum doubled; the retry's trainer trained at that batch."""
    (mark,) = [e for e in own_entries(m, "trainer: oom_retry") if e.get("RUN") == run_id]
    assert (mark["KILLED"], int(str(mark["MICRO_BATCH"])), int(str(mark["GRAD_ACCUM"]))) == ("True", *retried)
    spec = json.loads(m.read(f"/var/lib/memwarden/runs/{run_id}/job.run.json"))
    assert (spec["hyper"]["micro_batch"], spec["hyper"]["grad_accum"]) == retried
    starts = [e for e in progress(m, run_id) if e["event"] == "start"]
    assert [(s["micro_batch"], s["grad_accum"]) for s in starts] == [retried]
    assert killed[0] * killed[1] == retried[0] * retried[1]  # the same effective batch


def memory_max_unenforced(m: Machine) -> str | None:
    """Why the machine's systemd cannot end a unit at its MemoryMax, or None when it can: a unit allocating more
    than its cap must not run to its end."""
    done = m.run("systemd-run", "--wait", "--quiet", "--unit=memwarden-e2e-memory-probe", "-p",
                 f"MemoryMax={PROBE_MAX}", "/usr/bin/python3", "-c", f"b = bytearray({PROBE_ALLOC_MIB} << 20)",
                 check=False, timeout=60)
    if done.returncode != 0:
        return None
    fs = m.run("stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip()
    memory = m.run("findmnt", "-no", "FSTYPE,OPTIONS", "/sys/fs/cgroup/memory", check=False).stdout.strip()
    return (f"MemoryMax is not enforced in this machine: a unit allocating {PROBE_ALLOC_MIB} MiB under "
            f"MemoryMax={PROBE_MAX} ran to its end. The host's cgroups are v1 or hybrid (/sys/fs/cgroup is "
            f"{fs} in the machine; its memory controller is mounted {memory or 'nowhere'}): systemd-nspawn mounts "
            "the v1 controllers read-only, so the container's systemd cannot give a unit a memory cgroup. The "
            "kill and retry are covered by the SIGKILL case here and by test_systemd_executor.py (Result=oom-kill)")


def own_entries(m: Machine, message: str) -> list[dict[str, Any]]:
    """The daemon's own journal entries whose MESSAGE starts so, this boot."""
    m.run("journalctl", "--sync")
    return [e for e in m.journal("-b", "_SYSTEMD_UNIT=memwarden.service", "SYSLOG_IDENTIFIER=memwarden")
            if str(e.get("MESSAGE", "")).startswith(message)]


def pid1_says(m: Machine, unit: str) -> list[str]:
    out = m.run("journalctl", "--no-pager", "-b", "_PID=1", "-o", "cat").stdout
    return [line for line in out.splitlines() if unit in line]


def eventually(predicate, timeout: float, message: str):
    # Each look is a few processes started inside the machine: one a second is plenty.
    return wait_until(predicate, timeout=timeout, interval=1.0, message=message)


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
