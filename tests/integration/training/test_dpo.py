"""The DPO stage after the supervised one: the trainer as the daemon runs it, real torch on CPU, the tiny demo base.

The preference pairs ask how to answer a named person's request; the chosen replies are kind, the rejected ones
curt, so that what the stage learns on its pairs carries over to the held-out ones (other names, other
requests), which it never trains."""

from __future__ import annotations

import importlib.util
import json
import math
import signal
from pathlib import Path

import pytest

from memwarden.learning.eval_report import EvalReport
from memwarden.learning.jobspec import Hyper, JobSpec
from memwarden.learning.promotion import PROMOTED, Gate, judge
from support.memories import REQUESTS, preference

from .test_recall import ALL_LINEAR, FACTS
from .test_trainer import Trainer, assert_done, of, run

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="the train extra (torch, transformers, peft) is not installed",
)

HELD_OUT = 4  # the last four people: never trained by the stage
SFT_STEPS, DPO_STEPS = 8, 16


def preference_lines() -> list[dict]:
    return [{"memory_id": i, **preference(name, req), "heldout": i >= len(REQUESTS) - HELD_OUT}
            for i, (name, req) in enumerate(REQUESTS)]


def job(demo_base: Path, tmp_path: Path, **changes) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    facts = tmp_path / "train.jsonl"
    facts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                      {"role": "assistant", "content": a}]}) + "\n"
                             for q, a in FACTS))
    prefs = tmp_path / "preferences.jsonl"
    prefs.write_text("".join(json.dumps(line) + "\n" for line in preference_lines()))
    spec = JobSpec(run_id="dpo-1", adapter="memories", base_model=str(demo_base), method="lora",
                   output_dir=str(tmp_path / "run"), train_file=str(facts), holdout_file=str(facts),
                   recall_file=str(facts), preference_file=str(prefs),
                   hyper=Hyper(lr=1e-2, micro_batch=4, grad_accum=1, max_steps=SFT_STEPS, warmup_steps=0,
                               max_seq_len=96, eval_every=0, target_modules=ALL_LINEAR, recall_max_new_tokens=24,
                               recall_sample=4, dpo_steps=DPO_STEPS, dpo_beta=0.1, dpo_lr=5e-3),
                   **changes)
    spec.write(tmp_path / "job.json")
    return tmp_path / "job.json"


@pytest.fixture(scope="module")
def preference_round(demo_base, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dpo")
    rc, events, err = run(job(demo_base, root, checkpoint_every_steps=1000))
    return {"events": events, "done": assert_done(rc, events, err), "report": EvalReport.read(root / "run")}


def test_the_dpo_stage_follows_the_supervised_one_and_raises_held_out_preference_accuracy(preference_round):
    events, report = preference_round["events"], preference_round["report"]
    steps = of(events, "step")
    assert [s.get("stage") for s in steps] == [None] * SFT_STEPS + ["dpo"] * DPO_STEPS
    assert [s["step"] for s in steps] == list(range(1, SFT_STEPS + DPO_STEPS + 1))
    (stage,) = of(events, "stage")
    assert events.index(steps[SFT_STEPS - 1]) < events.index(stage) < events.index(steps[SFT_STEPS])
    assert (stage["step"], stage["pairs"], stage["heldout"], stage["resumed"]) == (SFT_STEPS, 8, HELD_OUT, False)
    # the reference is the policy the stage starts from: its first step's loss is log 2, its margin 0
    assert steps[SFT_STEPS]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert steps[SFT_STEPS]["margin"] == pytest.approx(0.0, abs=1e-3)
    assert sum(s["loss"] for s in steps[-4:]) < sum(s["loss"] for s in steps[SFT_STEPS:SFT_STEPS + 4])

    p = report.preference
    assert (p.pairs, p.heldout, p.steps, p.beta) == (8, HELD_OUT, DPO_STEPS, 0.1)
    assert p.accuracy_before == stage["accuracy_before"]
    assert p.accuracy_after > p.accuracy_before, p
    assert p.recall_before.memories == report.recall.memories == len(FACTS)
    assert preference_round["done"]["preference"]["accuracy_after"] == p.accuracy_after

    verdict = judge(report.judged(), Gate(min_recall=0.0, forgetting_epsilon=1.0, general_epsilon=10.0))
    assert (verdict.promote, verdict.code) == (True, PROMOTED), verdict.reason
    assert verdict.reason.endswith(f"held-out preferences {p.accuracy_before:.0%} → {p.accuracy_after:.0%}")


def test_a_trainer_killed_in_the_dpo_stage_resumes_in_it_with_its_saved_reference(demo_base, tmp_path,
                                                                                  preference_round):
    path = job(demo_base, tmp_path, checkpoint_every_steps=4)
    first = Trainer(path)
    begun = first.until(lambda e: e["event"] == "stage")
    first.until(lambda e: e["event"] == "checkpoint" and e["step"] > begun["step"])
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    assert of(first.events, "done") == []

    rc, events, err = run(path)
    assert_done(rc, events, err)
    start, (stage,) = of(events, "start")[0], of(events, "stage")
    assert start["resumed_from_step"] > SFT_STEPS  # a checkpoint of the DPO stage, not the supervised one's
    assert stage["resumed"] is True and stage["step"] == start["resumed_from_step"]
    assert all(s.get("stage") == "dpo" for s in of(events, "step"))  # the supervised stage is not redone
    assert [s["step"] for s in of(events, "step")] == list(range(start["resumed_from_step"] + 1,
                                                                 SFT_STEPS + DPO_STEPS + 1))
    # the reference came from the checkpoint: the same figures as the uninterrupted run's
    assert stage["accuracy_before"] == begun["accuracy_before"] == preference_round["report"].preference.accuracy_before
    report = EvalReport.read(tmp_path / "run")
    assert report.preference.steps == DPO_STEPS and report.step == SFT_STEPS + DPO_STEPS
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_oom_in_a_dpo_step_retries_the_same_step_at_half_the_micro_batch(demo_base, tmp_path, preference_round):
    oom_step = SFT_STEPS + 2  # the stage's second step
    rc, events, err = run(job(demo_base, tmp_path, checkpoint_every_steps=1000, inject_oom_at_step=oom_step))
    done = assert_done(rc, events, err)
    (oom,) = of(events, "oom_retry")
    assert (oom["stage"], oom["step"], oom["micro_batch"], oom["grad_accum"]) == ("dpo", oom_step, 2, 2)
    steps = of(events, "step")
    assert events.index(steps[oom_step - 2]) < events.index(oom) < events.index(steps[oom_step - 1])
    assert [s["step"] for s in steps] == list(range(1, SFT_STEPS + DPO_STEPS + 1))  # retried, not skipped
    # The same pairs and the same gradient in smaller pieces: the stage goes on as the uninterrupted run did.
    uninterrupted = of(preference_round["events"], "step")
    assert [s["loss"] for s in steps[SFT_STEPS:]] == pytest.approx([s["loss"] for s in uninterrupted[SFT_STEPS:]],
                                                                   rel=1e-3, abs=1e-4)
    assert done["preference"] == preference_round["done"]["preference"]
