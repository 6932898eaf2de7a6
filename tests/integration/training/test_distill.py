"""General rehearsal through the trainer subprocess on the demo base: distilled from the base it keeps the general
probe near where it was, learnt as text it moves it; a full fine-tune, with no adapter to disable, says it learns
it as text."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from memwarden.learning.jobspec import GENERAL_PROBE_FILE, GENERAL_REHEARSAL_FILE, Hyper, JobSpec
from memwarden.training.distill import FULL_NOTE

from .test_trainer import ALL_LINEAR, assert_done, of, run

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="the train extra (torch, transformers, peft) is not installed",
)


def general_only_job(demo_base: Path, tmp_path: Path, method: str, general_loss: str, steps: int) -> Path:
    """A training file of 8 of the base's general-rehearsal conversations, tagged general, and nothing else."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = (demo_base / GENERAL_REHEARSAL_FILE).read_text().splitlines()[:8]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"messages": json.loads(x)["messages"], "general": True}) + "\n"
                             for x in lines))
    spec = JobSpec(run_id=f"{method}-{general_loss}", adapter="memories", base_model=str(demo_base), method=method,
                   output_dir=str(tmp_path / "run"), train_file=str(train), holdout_file=str(train),
                   general_file=str(demo_base / GENERAL_PROBE_FILE),
                   hyper=Hyper(lr=1e-2, micro_batch=4, grad_accum=1, max_steps=steps, warmup_steps=0,
                               max_seq_len=128, eval_every=0, target_modules=ALL_LINEAR, general_loss=general_loss),
                   checkpoint_every_steps=0, checkpoint_every_seconds=0)
    spec.write(tmp_path / "job.json")
    return tmp_path / "job.json"


def test_general_rehearsal_distilled_from_the_base_moves_the_general_probe_a_fraction_of_what_text_does(
        demo_base, tmp_path):
    drift = {}
    for loss in ("distill", "ce"):
        rc, events, err = run(general_only_job(demo_base, tmp_path / loss, "lora", loss, steps=12))
        done = assert_done(rc, events, err)
        steps = of(events, "step")
        assert len(steps) == 12
        drift[loss] = done["eval"]["general_loss_after"] / done["eval"]["general_loss_before"] - 1
        if loss == "distill":
            # the adapter starts as the base (LoRA's B is 0): its first step has nothing to distil
            assert steps[0]["loss"] < 1e-6 and of(events, "start")[0]["notes"] == []
    # Adam turns the first step's rounding noise into a step of the learning rate's size, which the distillation
    # then pulls back: the probe moves, but a fraction of what the text's cross-entropy moves it (+0.7 % / +10 %)
    assert drift["ce"] > 0.03 and abs(drift["distill"]) < 0.25 * drift["ce"]


def test_a_full_fine_tune_learns_general_rehearsal_as_text_and_says_so(demo_base, tmp_path):
    rc, events, err = run(general_only_job(demo_base, tmp_path, "full", "distill", steps=2))
    assert_done(rc, events, err)
    assert FULL_NOTE in of(events, "start")[0]["notes"]
    assert min(s["loss"] for s in of(events, "step")) > 0.01  # cross-entropy on the general text


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_on_a_4bit_base_the_adapter_is_disabled_for_the_base_s_distribution_too(demo_base, tmp_path):
    rc, events, err = run(general_only_job(demo_base, tmp_path, "qlora", "distill", steps=2))
    assert_done(rc, events, err)
    start = of(events, "start")[0]
    assert start["quantized_layers"] > 0 and start["notes"] == []
    assert of(events, "step")[0]["loss"] < 1e-4  # the 4-bit base against itself: nothing to distil yet
