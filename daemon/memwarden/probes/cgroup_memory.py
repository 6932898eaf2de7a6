"""A container's memory straight from its cgroup files: microseconds per container, instead of the Docker
stats API's second or more. cgroup v1 (memory controller) and v2 (unified) both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CgroupMemory:
    usage: int
    working_set: int
    rss: int | None
    version: int


def _stat(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def cgroup_dir(pid: int, proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> Path:
    """The memory cgroup directory of process `pid` (v1 memory controller if mounted, else v2)."""
    lines = (proc_root / str(pid) / "cgroup").read_text().splitlines()
    v2 = None
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidate = cgroup_root / "memory" / path.lstrip("/")
            if candidate.is_dir():
                return candidate
        if hid == "0" and controllers == "":
            v2 = path
    if v2 is not None:
        for base in (cgroup_root, cgroup_root / "unified"):
            candidate = base / v2.lstrip("/")
            if (candidate / "memory.current").exists():
                return candidate
    raise FileNotFoundError(f"no memory cgroup found for pid {pid}")


def read_memory(directory: Path) -> CgroupMemory:
    if (directory / "memory.current").exists():
        usage = int((directory / "memory.current").read_text())
        stat = _stat(directory / "memory.stat")
        inactive = stat.get("inactive_file", 0)
        return CgroupMemory(usage, max(0, usage - inactive), stat.get("anon"), 2)
    usage = int((directory / "memory.usage_in_bytes").read_text())
    stat = _stat(directory / "memory.stat")
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return CgroupMemory(usage, max(0, usage - inactive), stat.get("total_rss", stat.get("rss")), 1)
