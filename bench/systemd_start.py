"""Under real systemd: `systemctl start` → active for the installed package, and its hardening exposure.

Builds the .deb (`make deb`'s script), boots a Debian 12 container with systemd-nspawn (tests/support/nspawn.py,
root needed), installs it, then times inside the machine, interleaved for --runs rounds:
  - `systemctl start memwarden.service` (Type=notify: returns once READY=1 arrived, after the first sample pass);
  - the first `memwardenctl status` with only memwarden.socket listening (socket activation + first answer);
  - the baseline: `systemctl start` of a Type=notify unit whose python3 sends READY=1 at once.
Also `systemd-analyze security memwarden.service`: the overall exposure and each item still counted against it.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, parser, ratio, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.nspawn import Machine, base_rootfs, build_deb, missing_means

REPO = Path(__file__).resolve().parent.parent

BASELINE_UNIT = """\
[Service]
Type=notify
ExecStart=/usr/bin/python3 -c "import os, socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); \
s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(86400)"
"""
NO_START_LIMIT = """\
[Unit]
StartLimitIntervalSec=0
"""
# Timed inside the machine, so nsenter's own start-up is not counted.
TIMER = """\
import subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(time.perf_counter() - t)
"""


def timed(m: Machine, *argv: str) -> float:
    return float(m.run("python3", "-c", TIMER, *argv).stdout)


def exposure(m: Machine) -> tuple[float, list[str]]:
    out = m.run("systemd-analyze", "security", "--no-pager", "memwarden.service").stdout
    level = re.search(r"Overall exposure level for memwarden\.service: (\d+\.\d+)", out)
    if level is None:
        raise RuntimeError(f"no exposure level in:\n{out}")
    # Items that still add exposure are marked ✗ and carry a non-zero weight in the last column.
    counted = []
    for line in out.splitlines():
        if "✗" in line and re.search(r"\d\.\d\s*$", line):
            words = line.split("✗", 1)[1].split()
            counted.append(f"{words[0]} ({words[-1]})")
    return float(level.group(1)), counted


def summary(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
            "max_ms": round(max(ms), 1)}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="timed rounds (default 10)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    why = missing_means()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    out = Path(tempfile.mkdtemp(prefix="mwdeb-"))
    deb = build_deb(REPO, out)
    with Machine(base_rootfs(), binds=[(out, "/mnt/deb")]) as m:
        m.run("dpkg", "-i", f"/mnt/deb/{deb.name}", timeout=300)
        m.write("/etc/systemd/system/baseline-notify.service", BASELINE_UNIT)
        # Two starts a round would trip systemd's start rate limit (5 in 10 s) after three rounds.
        m.write("/etc/systemd/system/memwarden.service.d/bench.conf", NO_START_LIMIT)
        m.run("systemctl", "daemon-reload")
        times: dict[str, list[float]] = {"start": [], "activation": [], "baseline": []}
        for i in range(args.runs + 1):  # round 0 warms the page cache and is not counted
            m.run("systemctl", "stop", "memwarden.service")
            start = timed(m, "systemctl", "start", "memwarden.service")
            m.run("systemctl", "stop", "memwarden.service")
            activation = timed(m, "memwardenctl", "status")
            m.run("systemctl", "stop", "baseline-notify.service")
            baseline = timed(m, "systemctl", "start", "baseline-notify.service")
            if i:
                times["start"].append(start)
                times["activation"].append(activation)
                times["baseline"].append(baseline)
        level, counted = exposure(m)
    results: dict[str, Any] = {name: summary(v) for name, v in times.items()}
    results["exposure"] = level
    results["exposure_items"] = counted
    base = results["baseline"]["median_ms"]
    rows = [
        ["systemctl start memwarden (→ active, READY after the first sample pass)",
         *(fmt(results["start"][k]) for k in ("median_ms", "min_ms", "max_ms")),
         fmt_ratio(ratio(results["start"]["median_ms"], base))],
        ["first memwardenctl status, only the socket listening (activation)",
         *(fmt(results["activation"][k]) for k in ("median_ms", "min_ms", "max_ms")),
         fmt_ratio(ratio(results["activation"]["median_ms"], base))],
        ["baseline: systemctl start, Type=notify python3 sending READY=1 at once",
         *(fmt(results["baseline"][k]) for k in ("median_ms", "min_ms", "max_ms")), "1.00×"],
    ]
    text = table(["in the booted machine (ms)", "median", "min", "max", "÷ baseline median"], rows)
    text += (f"\n\n{args.runs} rounds, interleaved, after one warm-up round; Debian 12 container booted with "
             f"systemd-nspawn, package {deb.name}.\n\n`systemd-analyze security memwarden.service`: overall "
             f"exposure **{level}**; items still counted: " + "; ".join(counted) + ".")
    emit("Under real systemd", text, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
