"""The headline command as a person types it: `memwardenctl lease 1GiB --wait 5s -- true`, options on either side
of SIZE, a command whose own arguments look like options, and `lease --help`."""

from __future__ import annotations

import subprocess
import sys

from support.daemon import BIN
from support.ollama_double.manager import sim_gpu

GiB = 1024**3
SHOW = "import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['MEMWARDEN_LEASE_ID'], sys.argv[1:])"


def ctl(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, *args], capture_output=True, text=True,
                          timeout=120)


def test_lease_options_before_and_after_size_reach_the_daemon_and_the_command_runs(make_daemon):
    d = make_daemon()
    sim = sim_gpu(d.workdir / "gpu.json", 12 * GiB)
    d.write_config({**d.sections, "gpu": {"backend": "sim", "sim_file": str(sim), "reserve": "1GiB"}})
    d.start()
    headline = ctl(d, "lease", "1GiB", "--wait", "5s", "--", "true")
    assert headline.returncode == 0, headline.stderr

    run = ctl(d, "lease", "--holder", "sft", "--priority", "4", "2GiB", "--gpu", "0", "--wait", "5s",
              "--preemptible", "--", sys.executable, "-c", SHOW, "--wait", "-h", "--", "x")
    assert run.returncode == 0, run.stderr
    gpu, lease_id, argv = run.stdout.split(" ", 2)
    assert gpu == "0" and argv.strip() == "['--wait', '-h', '--', 'x']"
    held = [x for x in d.call("lease.list", {"limit": 50})["recent"] if x["id"] == lease_id]
    assert held and held[0]["holder"] == "sft" and held[0]["size"] == 2 * GiB and held[0]["preemptible"]
    assert held[0]["priority"] == 4


def test_lease_help_exits_0(tmp_path):
    done = subprocess.run([BIN / "memwardenctl", "--socket", tmp_path / "none.sock", "lease", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: memwardenctl lease SIZE [options] -- CMD")
