"""A trainer that finishes while no daemon watches it (its daemon frozen, then killed): the next daemon takes its
adapter and report as they are, judges and promotes the run, and starts no trainer for it (the subprocess
executor, real torch on the demo base)."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess

import pytest

from support.daemon import BIN
from support.memories import FACTS
from support.ollama_double.manager import sim_gpu, wait_until
from support.tiny_run import tiny_learning

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="the train extra (torch, transformers, peft) is not installed",
)

GiB = 1024**3
RUN_TIMEOUT = 300


def test_a_run_whose_trainer_finished_while_its_daemon_was_down_is_promoted_without_a_new_trainer(
        make_daemon, demo_base, tmp_path):
    d = make_daemon()
    sim = d.workdir / "gpu.json"
    sim_gpu(sim, 12 * GiB)
    sections = {k: dict(v) for k, v in d.sections.items()}
    sections["daemon"]["sample_interval"] = "300ms"
    sections["gpu"] = {"backend": "sim", "sim_file": str(sim), "reserve": "512MiB"}
    sections["ollama"] = {"url": ""}
    sections["learning"] = tiny_learning(demo_base, dry_run_steps=0)
    d.start_with(sections)
    memories = tmp_path / "m.jsonl"
    memories.write_text("".join(json.dumps({"profile": "alice", "kind": kind, "content": content,
                                            "response": response, "importance": 10}) + "\n"
                                for kind, content, response in FACTS))
    imported = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "memories", "import", str(memories)],
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    wait_until(lambda: any(e.get("event") == "trainer: checkpoint" for e in d.log_events()), timeout=RUN_TIMEOUT,
               interval=0.2, message="a first checkpoint")
    (run,) = d.call("train.history")
    out = d.workdir / "state" / "runs" / run["id"]
    d.proc.send_signal(signal.SIGSTOP)  # the daemon watches nothing from here on; its trainer trains on
    try:
        wait_until(lambda: (out / "eval.json").is_file(), timeout=RUN_TIMEOUT, interval=0.2,
                   message="the trainer's report, written unwatched")
    finally:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    seen = len(d.log_events())
    d.start()
    promoted = wait_until(lambda: next((r for r in d.call("train.history") if r["state"] in
                                        ("promoted", "rejected", "failed")), None),
                          timeout=RUN_TIMEOUT, interval=0.5, message=lambda: f"the run judged; {d.log()[-3000:]}")
    assert (promoted["id"], promoted["state"], promoted["version"]) == (run["id"], "promoted", 1)
    after = d.log_events()[seen:]
    taken = [e for e in after if e.get("decision") == "training.reattach"]
    assert [(e["action"], e["code"], e["adapter_home"]) for e in taken] == [("take", 0, True)]
    assert not [e for e in after if e.get("event") == "trainer exited"], "no trainer was started again"
    assert (d.workdir / "state" / "adapters" / "alice" / "v1" / "adapter_model.safetensors").is_file()
