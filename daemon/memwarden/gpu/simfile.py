"""The simulated-GPU file (design contract): JSON written by any process under flock(LOCK_EX).

    {"gpus": [{"index": 0, "name": "Sim 12G", "total_bytes": 12884901888,
               "processes": [{"pid": 4242, "used_bytes": 6442450944}]}]}

A GPU's used bytes are the sum over listed processes that are still alive, as NVML would report them.
Writers rewrite the file in place under the lock (a rename would hand readers a different inode to lock);
readers take a shared lock so they never see a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class SimFileError(Exception):
    """The sim-GPU file is missing or malformed; the message names the file and the problem."""


def validate(data: Any, path: Path | str = "sim-GPU file") -> dict[str, Any]:
    def bad(msg: str) -> SimFileError:
        return SimFileError(f"{path}: {msg}")

    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise bad('expected an object with a "gpus" list')
    seen = set()
    for i, gpu in enumerate(data["gpus"]):
        if not isinstance(gpu, dict):
            raise bad(f"gpus[{i}] is not an object")
        index, total = gpu.get("index"), gpu.get("total_bytes")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0 or index in seen:
            raise bad(f"gpus[{i}].index must be a unique whole number >= 0")
        seen.add(index)
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            raise bad(f"gpus[{i}].total_bytes must be a positive whole number")
        procs = gpu.setdefault("processes", [])
        if not isinstance(procs, list):
            raise bad(f"gpus[{i}].processes must be a list")
        for j, proc in enumerate(procs):
            pid, used = (proc.get("pid"), proc.get("used_bytes")) if isinstance(proc, dict) else (None, None)
            if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0
                    and isinstance(used, int) and not isinstance(used, bool) and used >= 0):
                raise bad(f"gpus[{i}].processes[{j}] needs a pid > 0 and used_bytes >= 0 (whole numbers)")
        for key in ("temperature_c", "utilization_percent"):
            if key in gpu and gpu[key] is not None and not isinstance(gpu[key], int | float):
                raise bad(f"gpus[{i}].{key} must be a number")
    return data


def read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            raw = f.read()
    except FileNotFoundError:
        raise SimFileError(f"{path}: does not exist") from None
    except OSError as exc:
        raise SimFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimFileError(f"{path}: not valid JSON: {exc}") from None
    return validate(data, path)


@contextlib.contextmanager
def edit(path: Path) -> Iterator[dict[str, Any]]:
    """Lock the file exclusively, yield its data for changing, write it back."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise SimFileError(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            data = validate(json.loads(f.read() or b'{"gpus": []}'), path)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SimFileError(f"{path}: not valid JSON: {exc}") from None
        yield data
        _rewrite(f, data)


def _rewrite(f: Any, data: dict[str, Any]) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps(data, indent=1).encode())
    f.flush()


def create(path: Path, gpus: list[dict[str, Any]]) -> None:
    """Write a fresh sim file: gpus as [{"index", "name", "total_bytes", ...}]."""
    data = validate({"gpus": [{"processes": [], **g} for g in gpus]}, path)
    # Whatever was there (even a corrupt file) is replaced, under the same lock writers take.
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _rewrite(f, data)


def _gpu(data: dict[str, Any], index: int, path: Path) -> dict[str, Any]:
    for gpu in data["gpus"]:
        if gpu["index"] == index:
            return gpu
    raise SimFileError(f"{path}: no GPU with index {index}")


def book(path: Path, index: int, pid: int, used_bytes: int) -> None:
    """Set what `pid` uses on GPU `index` (replacing an earlier booking of the same pid there)."""
    with edit(path) as data:
        gpu = _gpu(data, index, path)
        gpu["processes"] = [p for p in gpu["processes"] if p["pid"] != pid]
        if used_bytes > 0:
            gpu["processes"].append({"pid": pid, "used_bytes": int(used_bytes)})


def unbook(path: Path, pid: int) -> None:
    with edit(path) as data:
        for gpu in data["gpus"]:
            gpu["processes"] = [p for p in gpu["processes"] if p["pid"] != pid]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    # A zombie still answers kill(0) but holds no memory; NVML drops it too.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
