"""A preference round under the real daemon: fact exchanges and preference memories imported through memwardenctl,
the run started with `train start`, its trainer (real torch on the CPU, the tiny demo base) following the
supervised stage with the DPO stage, the gate's decision, and the held-out preference accuracy before → after the
stage where people read it: `train history`, `train status` and the decision's journal line."""

from __future__ import annotations

import importlib.util
import json

import pytest

from support.learning_daemon import ctl, wait_for_run
from support.memories import FACTS, REQUESTS, preference

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="the train extra (torch, transformers, peft) is not installed",
)

DPO_STEPS = 16
HELD_OUT = 6  # of the 12 preference memories: learning.dpo_holdout_fraction 0.5
# A short supervised stage, so that the held-out pairs are not all preferred before the DPO stage, and a DPO
# stage strong enough to move them in a few steps; no dry run, no checkpoint due: the smallest whole round.
PREFERENCE_ROUND = {"importance_threshold": 10_000, "max_steps": 8, "max_epochs": 0, "lr": 1e-2,
                    "micro_batch": 4, "max_seq_len": 96, "dry_run_steps": 0, "checkpoint_steps": 1000,
                    "dpo_steps": DPO_STEPS, "dpo_lr": 5e-3, "dpo_holdout_fraction": 0.5}


def memories(path, profile: str) -> None:
    """The exchanges of FACTS and a preference memory per request of REQUESTS."""
    lines = [{"profile": profile, "kind": kind, "content": content, "response": response, "importance": 5}
             for kind, content, response in FACTS if response]
    lines += [{"profile": profile, "kind": "preference", "importance": 5, **preference(name, request)}
              for name, request in REQUESTS]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_preference_round_trains_its_dpo_stage_and_shows_the_preference_gain(learning, tmp_path):
    d, _ = learning({"learning": PREFERENCE_ROUND})
    memories(tmp_path / "alice.jsonl", "alice")
    imported = ctl(d, "memories", "import", str(tmp_path / "alice.jsonl"))
    assert imported.returncode == 0, imported.stderr
    started = ctl(d, "train", "start", "alice")
    assert started.returncode == 0, started.stderr

    run = wait_for_run(d)
    ev = run["eval"]
    before, after = ev["preference_accuracy_before"], ev["preference_accuracy_after"]
    assert run["state"] == "promoted", (run["reason"], ev)
    assert (ev["dpo_steps"], ev["preference_pairs"], ev["preference_heldout"]) == (
        DPO_STEPS, len(REQUESTS) - HELD_OUT, HELD_OUT)
    assert after > before, ev  # pairs the stage never trained
    assert ev["step"] == PREFERENCE_ROUND["max_steps"] + DPO_STEPS
    assert ev["recall_before_dpo_memories"] == ev["recall_memories"] > 0

    [stage] = [e for e in d.log_events() if e.get("event") == "trainer: stage"]
    assert (stage["stage"], stage["heldout"], stage["accuracy_before"]) == ("dpo", HELD_OUT, before)
    [decision] = [e for e in d.log_events() if e.get("decision") == "learning.promote"]
    assert decision["code"] == "promoted" and decision["preference_accuracy"] == [before, after]
    shown = f"{before:.0%}→{after:.0%} of {HELD_OUT}"  # the PREFERRED column
    assert run["reason"].endswith(f"held-out preferences {before:.0%} → {after:.0%}")
    assert decision["reason"] == run["reason"]

    history = ctl(d, "train", "history", "alice")
    assert history.returncode == 0 and "PREFERRED" in history.stdout and shown in history.stdout, history.stdout
    status = ctl(d, "train", "status")
    assert status.returncode == 0 and "PREFERRED" in status.stdout, status.stdout
    [version] = [line for line in status.stdout.splitlines() if line.startswith("alice ") and " v1 " in line]
    assert shown in version, status.stdout
