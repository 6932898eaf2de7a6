"""Where a VRAM lease goes and what must be evicted for it: a pure plan over a GPU snapshot.

The GPU needing the least eviction wins (bytes evicted, then models evicted, then index). A lease that fits
nowhere is refused with a reason naming what holds the memory on each GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memwarden.snapshots import Gpu
from memwarden.units import format_size


@dataclass(frozen=True)
class Resident:
    """A model resident in Ollama, in eviction order. gpu None: it could not be placed on a GPU."""

    name: str
    size_vram: int
    gpu: int | None = None
    pinned: bool = False
    runner_pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Held:
    """A granted lease: what it may still allocate (its size minus what its processes already use)."""

    lease_id: str
    holder: str
    gpu: int
    size: int
    outstanding: int
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Plan:
    gpu: int
    evict: tuple[str, ...]
    available_now: int
    available_after: int
    evicted_bytes: int


@dataclass(frozen=True)
class Refusal:
    reason: str
    holders: tuple[str, ...]
    never: bool = False  # no wait can help: the lease is larger than any GPU it may go on


def available(gpu: Gpu, leases: Sequence[Held], reserve: int) -> int:
    """Bytes a new lease could take on `gpu` right now without evicting anything."""
    outstanding = sum(h.outstanding for h in leases if h.gpu == gpu.index)
    return gpu.free_bytes - reserve - outstanding


def model_budget(gpu: Gpu, leased_bytes: int, reserve: int) -> int:
    """Bytes the model scheduler may fill on `gpu`: its total less the reserve and every lease's full size."""
    return max(0, gpu.total_bytes - reserve - leased_bytes)


@dataclass(frozen=True)
class GpuBudget:
    """One GPU as the arbiter hands it out: to a new lease, and to models."""

    index: int
    leasable_bytes: int  # a new lease could take this now without evicting anything
    model_budget_bytes: int  # the room models may fill (leases count at their full size)


def gpu_budgets(gpus: Sequence[Gpu], leases: Sequence[Held], reserve: int) -> tuple[GpuBudget, ...]:
    """Each GPU's budgets, in the order given."""
    return tuple(GpuBudget(g.index, max(0, available(g, leases, reserve)),
                           model_budget(g, sum(h.size for h in leases if h.gpu == g.index), reserve))
                 for g in gpus)


def holders_on(gpu: Gpu, residents: Sequence[Resident], leases: Sequence[Held]) -> list[str]:
    """Everything that holds memory on `gpu`, largest first, in words."""
    items: list[tuple[int, str]] = []
    accounted: set[int] = set()
    for r in residents:
        if r.gpu in (gpu.index, None):
            pinned = ", pinned" if r.pinned else ""
            items.append((r.size_vram, f"model {r.name} {format_size(r.size_vram)}{pinned}"))
            accounted.update(r.runner_pids)
    for h in leases:
        if h.gpu == gpu.index:
            items.append((h.size, f"lease {h.lease_id} ({h.holder}) {format_size(h.size)}"))
            accounted.update(h.pids)
    for p in gpu.processes or ():
        if p.pid not in accounted:
            used = p.used_bytes or 0
            label = f"pid {p.pid}{' ' + p.name if p.name else ''} {format_size(used) if p.used_bytes else '?'}"
            items.append((used, label))
    return [label for _, label in sorted(items, key=lambda i: -i[0])]


def _plan_on(gpu: Gpu, size: int, residents: Sequence[Resident], leases: Sequence[Held],
             reserve: int) -> Plan | None:
    avail = available(gpu, leases, reserve)
    taken: list[Resident] = []
    freed = 0
    for r in residents:  # already in eviction order
        if avail + freed >= size:
            break
        if r.pinned or r.gpu not in (gpu.index, None):
            continue
        taken.append(r)
        freed += r.size_vram
    if avail + freed < size:
        return None
    # A model taken early whose room the later, larger victims already make stays loaded (the most valuable tried
    # first): unloading it would cost its next request a load for nothing.
    evict: list[str] = []
    for r in reversed(taken):
        if avail + freed - r.size_vram >= size:
            freed -= r.size_vram
        else:
            evict.append(r.name)
    return Plan(gpu.index, tuple(reversed(evict)), avail, avail + freed, freed)


def plan_lease(size: int, gpus: Sequence[Gpu], residents: Sequence[Resident], leases: Sequence[Held],
               reserve: int, gpu: int | None = None) -> Plan | Refusal:
    candidates = [g for g in gpus if gpu is None or g.index == gpu]
    if not gpus:
        return Refusal("no GPU is visible (gpu.backend is none, or the GPU probe is degraded)", ())
    if not candidates:
        return Refusal(f"there is no GPU {gpu}; GPUs: {', '.join(str(g.index) for g in gpus)}", ())
    plans = [p for g in candidates if (p := _plan_on(g, size, residents, leases, reserve)) is not None]
    if plans:
        return min(plans, key=lambda p: (p.evicted_bytes, len(p.evict), p.gpu))
    where = f"GPU {gpu}" if gpu is not None else "any GPU"
    too_big = [g for g in candidates if size > g.total_bytes - reserve]
    if len(too_big) == len(candidates):
        # No eviction could ever make room: say so, and how much could be had, not who holds the GPU today.
        if len(candidates) == 1:
            g = candidates[0]
            than = f"GPU {g.index}'s {format_size(g.total_bytes)} (total)"
        else:
            than = "every GPU's total (" + ", ".join(f"GPU {g.index} {format_size(g.total_bytes)}"
                                                    for g in candidates) + ")"
        most = max(g.total_bytes - reserve for g in candidates)
        return Refusal(f"{format_size(size)} is more than {than}: ask for at most {format_size(most)} (the total "
                       f"less the {format_size(reserve)} gpu.reserve)", (), never=True)
    parts, all_holders = [], []
    for g in candidates:
        if g in too_big:
            parts.append(f"GPU {g.index} ({g.name}) has only {format_size(g.total_bytes)} in all")
            continue
        holders = holders_on(g, residents, leases)
        all_holders += holders
        usable = g.total_bytes - reserve
        held = ", ".join(holders) or "nothing memwarden can name (a process NVML does not list?)"
        parts.append(f"GPU {g.index} ({g.name}) has {format_size(max(0, available(g, leases, reserve)))} free of "
                     f"{format_size(usable)} usable after the {format_size(reserve)} reserve; held by: {held}")
    return Refusal(f"cannot lease {format_size(size)} on {where}: " + "; ".join(parts)
                   + "; wait for it (--wait), or free what holds it (pinned models are never evicted)",
                   tuple(all_holders))
