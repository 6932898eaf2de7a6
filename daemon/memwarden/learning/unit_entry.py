"""What a trainer unit runs: `python -m memwarden.learning.unit_entry RUN` (systemd/memwarden-train@.service).

It reads the run's launch file (/run/memwarden/train/RUN.json, written by systemd_executor.py), runs
`python -m memwarden.training SPEC` with its stdout (the progress events) appended to the run's progress file,
forwards SIGTERM to it (checkpoint, exit 75), and appends the trainer's exit status as a `unit_exit` record, so a
daemon reads the status even after systemd has unloaded a unit that ended well. stderr stays on the journal,
tagged with the run id by the unit. No MEMWARDEN_PARENT_PID: this trainer outlives the daemon on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

LAUNCH_DIR = Path(os.environ.get("MEMWARDEN_LAUNCH_DIR", "/run/memwarden/train"))


def main(argv: list[str] | None = None, trainer: str = "memwarden.training") -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m memwarden.learning.unit_entry RUN", file=sys.stderr)
        return 64
    launch_file = LAUNCH_DIR / f"{args[0]}.json"
    try:
        launch = json.loads(launch_file.read_text())
        spec, progress = str(launch["spec"]), Path(launch["progress"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot read the launch file {launch_file}: {exc}", file=sys.stderr)
        return 78
    gpu = launch.get("gpu")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if gpu is None else str(gpu), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MEMWARDEN_PARENT_PID", None)
    with progress.open("ab") as out:
        child = subprocess.Popen([sys.executable, "-m", trainer, spec], stdout=out,
                                 stdin=subprocess.DEVNULL, env=env)
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        code = child.wait()
        status = code if code >= 0 else 128 - code
        out.write(json.dumps({"event": "unit_exit", "code": status}).encode() + b"\n")
    if status not in (0, 75):  # the journal, tagged with the run, says so even when the trainer said nothing
        print(f"trainer of run {args[0]} exited with status {status}; its progress: {progress}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
