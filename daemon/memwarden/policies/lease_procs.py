"""Which processes belong to a lease, and in which lease a process's VRAM counts: pure functions over a
process table (pid → parent, process group and start time, as /proc/PID/stat tells).

A lease's processes are its holder and everything the holder started: its descendants as last seen, and every
process in a process group one of them leads (`memwardenctl lease` starts its command in a group of its own).
A process is known by its pid *and* start time, so a pid the kernel hands out again is never mistaken for one
of the lease's. Descendants orphaned by the holder's death stay members: they are tracked, not re-derived from
the parent chain. A lease is over only when none of its processes is left (`LeaseProcs.remaining`).

A process's VRAM counts once, in its innermost lease: the lease whose holder is its nearest ancestor (the
process itself included). A process cut off from its holder (the holder died and it was reparented) counts in
the smallest lease that tracked it, as a nested lease's processes are a subset of the outer lease's. Several
leases held by one pid: the newest takes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MAX_DEPTH = 4096  # a parent chain longer than this is corrupt (a pid reused into a loop); stop walking


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    start: int  # clock ticks after boot (/proc/PID/stat field 22): with the pid, a process's identity


@dataclass(frozen=True)
class LeaseProcs:
    """What the arbiter knows of one lease's processes. members: (pid, start) of every process of the lease
    but the holder; groups: process groups led by a member."""

    holder: int
    holder_start: int | None = None  # None: not known (the holder is matched on pid alone)
    members: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    groups: frozenset[int] = field(default_factory=frozenset)
    holder_alive: bool = True

    @property
    def remaining(self) -> bool:
        return self.holder_alive or bool(self.members)

    def pids(self) -> frozenset[int]:
        return frozenset(pid for pid, _ in self.members) | ({self.holder} if self.holder_alive else set())


def is_holder(procs: LeaseProcs, table: Mapping[int, Proc]) -> bool:
    """The holder pid is running and is the process that took the lease (same start time, when known)."""
    proc = table.get(procs.holder)
    return proc is not None and (procs.holder_start is None or proc.start == procs.holder_start)


def track(procs: LeaseProcs, table: Mapping[int, Proc]) -> LeaseProcs:
    """The lease's processes in `table` (a full process table): from the holder (if it still runs), the
    members still alive and the processes of tracked groups, follow children and the groups members lead."""
    alive = is_holder(procs, table)
    holder_group = table[procs.holder].pgid if alive else None
    children: dict[int, list[int]] = {}
    in_group: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
        in_group.setdefault(proc.pgid, []).append(proc.pid)
    frontier = [procs.holder] if alive else []
    frontier += [pid for pid, start in procs.members if pid in table and table[pid].start == start]
    frontier += [pid for g in procs.groups for pid in in_group.get(g, ())]
    seen: set[int] = set()
    groups: set[int] = set()
    while frontier:
        pid = frontier.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        frontier += children.get(pid, ())
        proc = table[pid]
        if pid != procs.holder and proc.pgid == pid and pid != holder_group and pid not in groups:
            groups.add(pid)
            frontier += in_group.get(pid, ())
    groups |= {g for g in procs.groups if g in in_group}  # a group outlives its leader while it has members
    members = frozenset((pid, table[pid].start) for pid in seen if not (alive and pid == procs.holder))
    return LeaseProcs(procs.holder, procs.holder_start, members, frozenset(groups), alive)


def attribute(pids: Iterable[int], table: Mapping[int, Proc],
              leases: Sequence[tuple[str, LeaseProcs]]) -> dict[int, str]:
    """pid → the id of the one lease its VRAM counts in (see the module's rule); pids of no lease are left out.
    `leases` oldest first; `table` needs each pid and its ancestors."""
    by_holder: dict[int, list[tuple[str, LeaseProcs]]] = {}
    for lease_id, procs in leases:
        by_holder.setdefault(procs.holder, []).append((lease_id, procs))
    out: dict[int, str] = {}
    for pid in pids:
        owner = _nearest_holder(pid, table, by_holder)
        if owner is None:
            owner = _smallest_tracking(pid, table, leases)
        if owner is not None:
            out[pid] = owner
    return out


def _nearest_holder(pid: int, table: Mapping[int, Proc],
                    by_holder: Mapping[int, list[tuple[str, LeaseProcs]]]) -> str | None:
    current = pid
    for _ in range(MAX_DEPTH):
        proc = table.get(current)
        if proc is None:
            return None
        held = [lease_id for lease_id, procs in by_holder.get(current, ())
                if procs.holder_start is None or procs.holder_start == proc.start]
        if held:
            return held[-1]
        if proc.ppid in (0, current):
            return None
        current = proc.ppid
    return None


def _smallest_tracking(pid: int, table: Mapping[int, Proc], leases: Sequence[tuple[str, LeaseProcs]]) -> str | None:
    proc = table.get(pid)
    if proc is None:
        return None
    tracking = [(len(procs.members), -order, lease_id) for order, (lease_id, procs) in enumerate(leases)
                if (pid, proc.start) in procs.members]
    return min(tracking)[2] if tracking else None
