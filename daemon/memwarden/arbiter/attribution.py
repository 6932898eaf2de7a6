"""Which GPU a resident Ollama model sits on.

/api/ps does not say. Ollama starts one runner per model as `ollama runner --model /…/blobs/sha256-…`, and
/api/show's modelfile names the same blob in its FROM line: matching the two maps each GPU process that NVML
(or the sim file) lists to a model, and so each model to a GPU and its runner pid.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from memwarden.snapshots import GpuSnapshot


def runner_model_path(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    try:
        argv = (proc_root / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in argv if a]
    for i, arg in enumerate(args):
        if arg == "--model" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return None


def locate(gpus: GpuSnapshot, blob_of_model: Mapping[str, str],
           proc_root: Path = Path("/proc")) -> dict[str, tuple[int, tuple[int, ...]]]:
    """model name → (GPU index, runner pids), for the models whose runner could be found on a GPU."""
    model_of_blob = {blob: name for name, blob in blob_of_model.items()}
    found: dict[str, tuple[int, list[int]]] = {}
    for gpu in gpus.gpus:
        for proc in gpu.processes or ():
            name = model_of_blob.get(runner_model_path(proc.pid, proc_root) or "")
            if name is not None:
                found.setdefault(name, (gpu.index, []))[1].append(proc.pid)
    return {name: (index, tuple(pids)) for name, (index, pids) in found.items()}
