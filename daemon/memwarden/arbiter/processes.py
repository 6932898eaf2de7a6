"""The process table the lease rules read (policies/lease_procs.py): pid, parent, process group and start time
from /proc/PID/stat. Zombies are left out: they hold no memory and NVML no longer lists them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from memwarden.policies.lease_procs import MAX_DEPTH, Proc


def parse_stat(pid: int, text: bytes) -> Proc | None:
    """/proc/PID/stat → Proc; None for a zombie or a line that does not parse. The command name (field 2) may
    hold spaces and parentheses, so fields are counted from the last ')'."""
    try:
        fields = text.rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None
        return Proc(pid, int(fields[1]), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def read(pid: int, proc_root: Path = Path("/proc")) -> Proc | None:
    try:
        text = (proc_root / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return parse_stat(pid, text)


def scan(proc_root: Path = Path("/proc")) -> dict[int, Proc]:
    """Every live process (a blocking walk of /proc: call it off the event loop)."""
    table: dict[int, Proc] = {}
    try:
        entries = [e.name for e in proc_root.iterdir() if e.name.isdigit()]
    except OSError:
        return table
    for name in entries:
        proc = read(int(name), proc_root)
        if proc is not None:
            table[proc.pid] = proc
    return table


def lineage(pids: Iterable[int], proc_root: Path = Path("/proc")) -> dict[int, Proc]:
    """The processes `pids` and all their ancestors: what attributing them to leases needs."""
    table: dict[int, Proc] = {}
    for pid in pids:
        current = pid
        for _ in range(MAX_DEPTH):
            if current in table or current <= 0:
                break
            proc = read(current, proc_root)
            if proc is None:
                break
            table[current] = proc
            current = proc.ppid
    return table


def descends_from(pid: int, ancestor: int, proc_root: Path = Path("/proc")) -> bool:
    """`pid` is `ancestor` itself or a process it started (directly or not) that still runs."""
    table = lineage([pid], proc_root)
    current = pid
    for _ in range(MAX_DEPTH):
        if current == ancestor:
            return current in table
        proc = table.get(current)
        if proc is None or proc.ppid in (0, current):
            return False
        current = proc.ppid
    return False
