"""The simulated GPUs the runners book their VRAM on: free memory as NVML would show it, placement, recovery.

Free = total − the bytes booked by live pids in the sim-GPU file, whoever booked them (a memwarden lease's
process, another test's squatter), so the simulator sees the same GPU memwarden does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from memwarden.gpu import simfile

from .runners import Runner, Settings


def check_gpus(sim_file: Path, indices: Sequence[int] | None) -> list[int]:
    """The GPU indices to serve on (None: every GPU in the file); a missing one is a SimFileError."""
    present = [g["index"] for g in simfile.read(sim_file)["gpus"]]
    if indices is None:
        if not present:
            raise simfile.SimFileError(f"{sim_file}: no GPUs listed")
        return sorted(present)
    missing = [i for i in indices if i not in present]
    if missing:
        raise simfile.SimFileError(f"{sim_file}: no GPU with index {', '.join(map(str, missing))}")
    return list(indices)


class SimGpus:
    def __init__(self, sim_file: Path, indices: Sequence[int]):
        self.sim_file = sim_file
        self.indices = list(indices)

    def _free_sync(self) -> dict[int, int]:
        out = {}
        for gpu in simfile.read(self.sim_file)["gpus"]:
            if gpu["index"] in self.indices:
                used = sum(p["used_bytes"] for p in gpu["processes"] if simfile.pid_alive(p["pid"]))
                out[gpu["index"]] = gpu["total_bytes"] - used
        missing = set(self.indices) - set(out)
        if missing:
            raise simfile.SimFileError(f"{self.sim_file}: no GPU with index {min(missing)}")
        return out

    async def free(self) -> dict[int, int]:
        """GPU index → free bytes, for the GPUs this server uses."""
        return await asyncio.to_thread(self._free_sync)

    @staticmethod
    def place(free: dict[int, int], need: int) -> int | None:
        """The GPU a whole model goes on: the one with the most free VRAM that fits it (Ollama fits a model on
        one GPU when it can); None when none fits. Ties go to the lowest index."""
        fits = [i for i in sorted(free, key=lambda i: (-free[i], i)) if free[i] >= need]
        return fits[0] if fits else None

    @staticmethod
    def roomiest(free: dict[int, int]) -> int:
        return min(free, key=lambda i: (-free[i], i))

    async def book(self, gpu: int, pid: int, used: int) -> None:
        await asyncio.to_thread(simfile.book, self.sim_file, gpu, pid, used)

    async def unbook(self, pid: int) -> None:
        with contextlib.suppress(simfile.SimFileError, OSError):
            await asyncio.to_thread(simfile.unbook, self.sim_file, pid)

    async def wait_recovery(self, victim: Runner, free_before: int, s: Settings,
                            on_timeout: Callable[[], None]) -> None:
        """waitForVRAMRecovery: poll until 75 % of the victim's VRAM shows free on its GPU, for up to 5 s."""
        if victim.size_vram <= 0:
            return
        target = free_before + s.vram_recovery_fraction * victim.size_vram
        deadline = time.monotonic() + s.vram_recovery_timeout
        while True:
            if (await self.free())[victim.gpu] >= target:
                return
            if time.monotonic() >= deadline:
                on_timeout()
                return
            await asyncio.sleep(s.vram_poll_interval)  # Ollama polls too: there is no event to await
