"""The real memwardend with learning on, as the learning cycle's tests drive it: on a 12 GiB sim GPU, with the
Ollama double serving the demo base's model, tiny runs (tiny_run.py) that its trainers run on one torch thread,
memwardenctl against its socket, and its runs awaited."""

from __future__ import annotations

import subprocess
from typing import Any

from support.daemon import BIN
from support.ollama_double import OllamaDouble
from support.ollama_double.manager import sim_gpu, wait_until
from support.tiny_run import BASE, tiny_learning

GiB = 1024**3
RUN_TIMEOUT = 300
# The trainers the daemon starts inherit its environment: one torch thread each. On a busy 2-core machine torch's
# own choice (a thread per core) spins against the other work, and a step of the demo base takes 7 to 21 times
# as long as with one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def start(make_daemon, demo_base, started: list[OllamaDouble], extra: dict | None = None, with_double: bool = True,
          models: tuple[dict[str, Any], ...] | list[dict[str, Any]] = ()):
    """A started daemon and its Ollama double (None without one), which joins `started` to be cleaned up."""
    d = make_daemon(env=ONE_THREAD)
    sim = d.workdir / "gpu.json"
    sim_gpu(sim, 12 * GiB)
    double = None
    if with_double:
        double = OllamaDouble(sim, [{"name": BASE, "size": GiB, "family": "llama"}, *models], unload_linger=0.2,
                              workdir=d.workdir / "od").start()
        started.append(double)
    sections = {k: dict(v) for k, v in d.sections.items()}
    sections["daemon"]["sample_interval"] = "300ms"
    sections["gpu"] = {"backend": "sim", "sim_file": str(sim), "reserve": "512MiB"}
    sections["ollama"] = {"url": double.url if double else ""}
    sections["learning"] = tiny_learning(demo_base)
    return d.start_with(sections, extra), double


def ctl(d, *args):
    return subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, *args], capture_output=True, text=True,
                          timeout=120)


def runs(d):
    return d.call("train.history", {"limit": 50})


def wait_for_run(d, states=("promoted", "rejected", "failed"), timeout=RUN_TIMEOUT):
    return wait_until(lambda: next((r for r in runs(d) if r["state"] in states), None), timeout=timeout,
                      interval=0.5, message=lambda: f"a run in {states}; runs: {runs(d)}; log tail: {d.log()[-3000:]}")
