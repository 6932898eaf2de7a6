"""A training run as a Ray job, on the node Ray placed it on: `python -m memwarden.training.ray_entry job.json`.

The job's working directory (its runtime_env, uploaded by the daemon) holds the spec and its input files, named
relative to it; the run's output lives on this node under $MEMWARDEN_RAY_RUNS (default
~/.cache/memwarden/ray-runs) by run id, so a job resubmitted to this node resumes from the checkpoint kept
there. The trainer runs as a child; its progress lines are this job's log, which the daemon reads. A stop
(SIGTERM to the job) makes the trainer checkpoint and exit 75, as under the daemon.

After a finished real run the adapter goes home through the same log: a manifest (name, size, sha256 of each
adapter file, and the bytes of the whole output directory at its largest), then the files in base64 chunks,
then an `exit` line with the trainer's code. Only ADAPTER_FILES travel: never checkpoints or optimizer state.

With MEMWARDEN_RAY_LEASE=1 in the node's environment (a worker host that runs memwarden too), the trainer runs
under that host's VRAM lease: `memwardenctl lease SIZE -- python -m memwarden.training JOB`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

RUNS_ENV = "MEMWARDEN_RAY_RUNS"
LEASE_ENV = "MEMWARDEN_RAY_LEASE"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "fisher.safetensors")
REPORT_FILE = "eval.json"  # the trainer's report (learning/eval_report.py), beside final/
CHUNK = 192 * 1024  # raw bytes per chunk line (256 KiB of base64)
# The Jobs API's log tail hands lines over in batches: a batch of 10 lines at once, a shorter one only after a
# second's sleep at the log's end. Blank lines after the last record fill its batch, so the record goes at once.
BATCH_FILL = "\n" * 10
FILE_KEYS = ("train_file", "holdout_file", "probe_file", "recall_file", "init_adapter")


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def node_runs() -> Path:
    return Path(os.environ.get(RUNS_ENV) or Path.home() / ".cache" / "memwarden" / "ray-runs")


def localize(data: dict[str, Any], here: Path, root: Path) -> dict[str, Any]:
    """The shipped spec with its paths on this node: inputs in the working directory, output under `root`."""
    out = dict(data)
    for key in FILE_KEYS:
        if out.get(key):
            out[key] = str(here / out[key])
    ewc = dict(out.get("ewc") or {})
    if ewc.get("prior_fisher"):
        ewc["prior_fisher"] = str(here / ewc["prior_fisher"])
    out["ewc"] = ewc
    out["output_dir"] = str(root / out["output_dir"])
    if out.get("device") == "auto":
        out["device"] = "cuda" if cuda_visible() else "cpu"
    return out


def cuda_visible() -> bool:
    try:
        import torch  # the worker has the train extra; the daemon never runs this module
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def manifest(out: Path) -> list[dict[str, Any]]:
    files = [out / "final" / n for n in ADAPTER_FILES] + [out / REPORT_FILE]
    return [{"name": str(p.relative_to(out)), "size": p.stat().st_size, "sha256": sha256(p)}
            for p in files if p.is_file()]


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def send_adapter(out: Path, peak_bytes: int) -> None:
    files = manifest(out)
    emit({"event": "adapter_manifest", "files": files, "output_bytes": max(peak_bytes, tree_bytes(out))})
    for entry in files:
        with (out / entry["name"]).open("rb") as f:
            offset = 0
            while block := f.read(CHUNK):
                emit({"event": "adapter_chunk", "name": entry["name"], "offset": offset,
                      "data": base64.b64encode(block).decode()})
                offset += len(block)


def relay(child: subprocess.Popen, out: Path) -> int:
    """The trainer's lines to the job's log; the output directory's size at its largest (at a checkpoint, with
    the optimizer state), which is what shipping the whole directory would cost."""
    assert child.stdout is not None
    peak = 0
    for line in child.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if '"checkpoint"' in line:
            peak = max(peak, tree_bytes(out))
    return peak


def trainer_command(spec_file: Path, lease_size: int) -> list[str]:
    cmd = [sys.executable, "-m", "memwarden.training", str(spec_file)]
    ctl = shutil.which("memwardenctl")
    if os.environ.get(LEASE_ENV) == "1" and ctl and lease_size > 0:
        return [ctl, "lease", str(lease_size), "--preemptible", "--holder", "training (ray)", "--", *cmd]
    return cmd


def main(argv: list[str]) -> int:
    shipped = Path(argv[0]).resolve()
    data = json.loads(shipped.read_text())
    lease_size = int(data.pop("lease_size", 0) or 0)
    spec = localize(data, shipped.parent, node_runs())
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    local = out.parent / f"{out.name}.job.json"
    local.write_text(json.dumps(spec, indent=1))
    env = {**os.environ, "MEMWARDEN_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(trainer_command(local, lease_size), env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, text=True)
    # A stop reaches every process of the job; the trainer checkpoints, this one waits for it to finish.
    signal.signal(signal.SIGTERM, lambda *_: child.poll() is None and child.send_signal(signal.SIGTERM))
    peak = relay(child, out)
    code = child.wait()
    if code == 0 and not spec.get("dry_run_steps"):
        send_adapter(out, peak)
    emit({"event": "exit", "code": code})
    sys.stdout.write(BATCH_FILL)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
