"""The fault suite's fuzzers, counted: inputs tried and crashes, per fuzzer.

Runs tests/faults/test_control_socket_fuzz.py and tests/faults/test_config_fuzz.py under pytest with
MEMWARDEN_FUZZ_SCALE=--scale (every fuzzer's example count multiplied) and MEMWARDEN_FUZZ_REPORT pointing at a
temp file the tests fill in. A crash is a failed fuzz test: a reply that is not well-formed JSON-RPC, an internal
error, a daemon that exited or stopped answering, an RSS that grew, a loader that raised anything but ConfigError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, exit_cleanly_on_sigterm, parser, table

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("tests/faults/test_control_socket_fuzz.py", "tests/faults/test_config_fuzz.py")


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every fuzzer's example count (default 1)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="mw-fuzz-") as tmp:
        report = Path(tmp) / "counts.json"
        env = {**os.environ, "MEMWARDEN_FUZZ_SCALE": str(args.scale), "MEMWARDEN_FUZZ_REPORT": str(report)}
        started = time.monotonic()
        # No per-test time-out: at --scale 10 the config fuzzer alone runs longer than pytest's 300 s.
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=0",
                              *SUITES], cwd=ROOT,
                             env=env, capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - started
        counts = json.loads(report.read_text()) if report.exists() else {}
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-2000:], sep="\n", file=sys.stderr)
    rows = []
    for name, c in sorted(counts.items()):
        detail = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k not in ("inputs", "crashes")
                           and not k.endswith("_bytes"))
        rows.append([name, c["inputs"], c["crashes"], detail])
    inputs = sum(c["inputs"] for c in counts.values())
    # A failure outside a fuzz test's own body (the daemon's checks at teardown) counts as one crash too.
    crashes = sum(c["crashes"] for c in counts.values()) or (1 if run.returncode != 0 else 0)
    rows.append(["**all**", inputs, crashes, f"pytest exit {run.returncode}, {elapsed:.0f} s"])
    emit("fuzzing counts", table(["fuzzer", "inputs tried", "crashes", "amounting to"], rows),
         {"scale": args.scale, "inputs": inputs, "crashes": crashes, "pytest_exit": run.returncode,
          "seconds": round(elapsed, 1), "fuzzers": counts}, args.json)
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
