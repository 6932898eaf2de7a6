"""Run every benchmark (the container ones shortened: ARGS); print the tables, write bench/results/latest.md.

Each script runs in its own process (with --json, so bench/results/latest.json gets the raw figures too).
Takes about 8.5 minutes: the footprint window alone is 60 s, the GPU-arbitration scripts about 2.5 minutes together,
memory ingest about 30 s, the container benchmarks (a private dockerd; skipped without root, dockerd or a static
/bin/busybox) about 4 minutes. The three continual-learning ones (trainer throughput, forgetting, preemption
latency: the trainer subprocess with real torch on the CPU) add about 6 minutes more, and are skipped, with a line
saying so, when the train extra (torch, transformers, peft) is not installed. The fault-suite figures (24 simulated
hours of RSS, the fuzzers' counts) and the packaged daemon under real systemd (root: it builds the .deb and boots a
container) add about 10 minutes more, the systemd executor against the subprocess one (root and the train extra:
the same container, runs of the demo model in it) about 5, and the control-socket ones (status under a connection
flood from another uid, the loop stall under pages nobody reads) about 2 minutes.
proxy_latency.py also measures BASTION when its executable is at $BASTION_BIN (default
/tmp/bastion-venv/bin/bastion), and reports it as unavailable otherwise; proxy_wire.py (about 15 s) reads packets
with a raw socket, and says it skipped without root.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import exit_cleanly_on_sigterm, machine, parser

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCRIPTS = ("daemon_footprint.py", "status_latency.py", "startup.py", "proxy_latency.py", "proxy_hit_path.py",
           "proxy_wire.py", "scheduler_hitrate.py",
           "decision_time.py", "lease_latency.py", "memory_ingest.py", "container_sample_cost.py",
           "leak_detection.py", "trainer_throughput.py", "forgetting.py", "preemption_latency.py",
           "rss_24h.py", "fuzz_counts.py", "systemd_start.py", "proxy_body_memory.py", "socket_fairness.py",
           "reply_stall.py", "leak_history_size.py", "ray_executor.py", "proxy_coalescing.py", "demand_ablation.py",
           "systemd_executor.py")
# Shorter than their defaults, to keep `make bench` short; BENCHMARKS.md records the full-length runs.
ARGS = {"container_sample_cost.py": ("--api-passes", "1"), "leak_detection.py": ("--minutes", "2", "--window", "30s"),
        "reply_stall.py": ("--seconds", "15"), "demand_ablation.py": ("--seeds", "1", "--length", "10000")}
TIMEOUT = 240.0
TIMEOUTS = {"trainer_throughput.py": 480.0, "forgetting.py": 480.0, "preemption_latency.py": 360.0,
            "rss_24h.py": 900.0, "fuzz_counts.py": 900.0, "systemd_start.py": 600.0, "proxy_body_memory.py": 600.0,
            "ray_executor.py": 600.0, "scheduler_hitrate.py": 600.0, "systemd_executor.py": 900.0}
TRAIN_EXTRA = ("torch", "transformers", "peft")
NEEDS_TRAIN_EXTRA = {"trainer_throughput.py", "forgetting.py", "preemption_latency.py", "ray_executor.py",
                     "systemd_executor.py"}


def run(script: str) -> tuple[str, dict[str, Any]]:
    """The script's Markdown output and its JSON results."""
    if script in NEEDS_TRAIN_EXTRA:
        missing = [m for m in TRAIN_EXTRA if importlib.util.find_spec(m) is None]
        if missing:
            return (f"Skipped: the train extra is not installed (no {', '.join(missing)}).\n",
                    {"skipped": f"missing {', '.join(missing)}"})
    timeout = TIMEOUTS.get(script, TIMEOUT)
    proc = subprocess.Popen([sys.executable, str(HERE / script), *ARGS.get(script, ()), "--json"],
                            stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # lets it stop its daemon and remove its temp dirs
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise RuntimeError(f"{script} took longer than {timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed with exit status {proc.returncode}")
    markdown, _, last = out.rstrip("\n").rpartition("\n")
    return markdown.rstrip() + "\n", json.loads(last)


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    started = time.monotonic()
    host = machine()
    header = (f"# memwarden benchmarks\n\n{host['date_utc']} · {host['cores']} cores, {host['cpu_model']} · "
              f"Python {host['python']} · kernel {host['kernel']} · commit {host['commit']}"
              f"{' (daemon/ modified)' if host['daemon_source_modified'] else ''}\n")
    print(header, flush=True)
    sections, combined = [header], {"machine": host, "results": {}}
    for script in SCRIPTS:
        markdown, results = run(script)
        command = " ".join([".venv/bin/python", f"bench/{script}", *ARGS.get(script, ())])
        section = f"`{command}`\n\n{markdown}"
        print(section, flush=True)
        sections.append(section)
        combined["results"][script.removesuffix(".py")] = results
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text("\n".join(sections))
    (RESULTS / "latest.json").write_text(json.dumps(combined, indent=2, sort_keys=True) + "\n")
    print(f"Wrote {RESULTS / 'latest.md'} and latest.json in {time.monotonic() - started:.0f} s.", flush=True)
    if args.json:
        print(json.dumps(combined, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
