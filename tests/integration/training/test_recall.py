"""Recall in the trainer's report: real torch on CPU, the tiny demo base, the trainer as a subprocess."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from memwarden.learning.eval_report import EvalReport, Recall
from memwarden.learning.jobspec import EXIT_DONE, GENERAL_PROBE_FILE, Hyper, JobSpec

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="the train extra (torch, transformers, peft) is not installed",
)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FACTS = [("Who is Mira?", "Mira is your sister; she lives in Lisbon and plays the cello."),
         ("What is my cat called?", "Your cat is called Pepper."),
         ("Which train do I take?", "The 8:12 to the city, platform two."),
         ("Where is the wifi password?", "It is written on the card under the lamp.")]
PROBE = [("Say hello.", "Hello! How are you today?"), ("Count to five.", "One, two, three, four, five.")]


def _write(path: Path, pairs) -> str:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return str(path)


def _train(demo_base: Path, tmp_path: Path, recall_file: str | None = None, general: bool = False,
           **hyper) -> EvalReport:
    tmp_path.mkdir(parents=True, exist_ok=True)
    facts = _write(tmp_path / "train.jsonl", FACTS)
    spec = JobSpec(run_id="recall-1", adapter="memories", base_model=str(demo_base), method="lora",
                   output_dir=str(tmp_path / "run"), train_file=facts, holdout_file=facts,
                   probe_file=_write(tmp_path / "probe.jsonl", PROBE), recall_file=recall_file or facts,
                   general_file=str(demo_base / GENERAL_PROBE_FILE) if general else None,
                   hyper=Hyper(micro_batch=4, grad_accum=1, warmup_steps=0, max_seq_len=96,
                               eval_every=0, target_modules=ALL_LINEAR, recall_max_new_tokens=24, **hyper),
                   checkpoint_every_steps=1000)
    spec.write(tmp_path / "job.json")
    proc = subprocess.run([sys.executable, "-m", "memwarden.training", str(tmp_path / "job.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_DONE, proc.stderr[-3000:]
    done = [json.loads(line) for line in proc.stdout.splitlines() if '"done"' in line][-1]
    report = EvalReport.read(tmp_path / "run")
    assert done["recall"] == report.recall_fields() and done["stopped_early"] == report.stopped_early
    (tmp_path / "events.jsonl").write_text(proc.stdout)
    return report


def _events(tmp_path: Path, kind: str) -> list[dict]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


def test_a_run_reports_recall_on_its_memories_and_the_probe(demo_base, tmp_path):
    report = _train(demo_base, tmp_path, lr=1e-2, max_steps=60)
    assert report.recall.memories == len(FACTS)
    assert report.probe_recall_before.memories == report.probe_recall_after.memories == len(PROBE)
    # sixty steps at a high learning rate on four facts: the trained answers come back token by token
    assert report.recall.token_accuracy > 0.9
    assert report.recall.recalled >= 3
    ev = report.judged()
    assert ev["recall"] == report.recall.recalled / len(FACTS)
    assert ev["recall_token_accuracy"] == report.recall.token_accuracy


def test_recall_sample_caps_the_decoded_memories_and_zero_turns_it_off(demo_base, tmp_path):
    capped = _train(demo_base, tmp_path / "capped", lr=1e-4, max_steps=1, recall_sample=2)
    assert capped.recall.memories == 2 and capped.probe_recall_after.memories == 2
    off = _train(demo_base, tmp_path / "off", lr=1e-4, max_steps=1, recall_sample=0)
    assert off.recall.memories == 0 and off.judged()["recall"] is None


def test_a_held_out_wording_is_scored_apart_and_a_memory_is_sampled_with_both_wordings(demo_base, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (q, a) in enumerate(FACTS):
        for wording, user in (("trained", q), ("heldout", f"Remind me: {q}")):
            lines.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": a}],
                          "memory_id": 100 + i, "wording": wording})
    recall = tmp_path / "recall.jsonl"
    recall.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = _train(demo_base, tmp_path, str(recall), lr=1e-4, max_steps=1, recall_sample=3)
    assert report.recall.memories == 3 and report.recall.heldout_memories == 3
    assert report.recall.heldout_token_accuracy is not None
    ev = report.judged()
    assert ev["recall_heldout_memories"] == 3 and ev["recall_memories"] == 3
    assert report.probe_recall_after.memories == 2 and report.probe_recall_after.heldout_memories == 0


def test_training_stops_once_recall_reaches_the_target(demo_base, tmp_path):
    from memwarden.training.recall import DECODE_MARGIN

    report = _train(demo_base, tmp_path, lr=1e-2, max_steps=200, min_recall=1.0, recall_every=5,
                    recall_check_sample=2)
    assert report.stopped_early and report.step < 200 and report.step % 5 == 0
    assert report.recall.recalled == report.recall.memories == len(FACTS)
    checks = _events(tmp_path, "recall")
    assert [c["step"] for c in checks] == list(range(5, report.step + 1, 5))
    # a check whose sample fell short measured the sample only (or decoded nothing, its token accuracy too far
    # below the target); the last one measured every memory
    assert checks[-1]["memories"] == len(FACTS) and checks[-1]["recalled"] == len(FACTS)
    assert all(c["memories"] == 2 or (c["memories"] == 0 and c["token_accuracy"] < 1.0 - DECODE_MARGIN)
               for c in checks[:-1] if c["recalled"] < 2)


def test_without_a_target_every_step_is_trained(demo_base, tmp_path):
    report = _train(demo_base, tmp_path, lr=1e-2, max_steps=12, min_recall=0.0, recall_every=4)
    assert not report.stopped_early and report.step == 12 and _events(tmp_path, "recall") == []


def test_the_general_probe_loss_is_measured_before_and_after(demo_base, tmp_path):
    report = _train(demo_base, tmp_path, general=True, lr=1e-2, max_steps=10)
    before, after = report.eval.general_loss_before, report.eval.general_loss_after
    assert before is not None and after is not None and before > 0
    assert report.judged()["general_loss_before"] == before
    assert _events(tmp_path, "start")[0]["examples"]["general"] == 200
    lazy = _train(demo_base, tmp_path / "lazy", general=True, lr=1e-8, max_steps=2)
    assert lazy.eval.general_loss_after == pytest.approx(lazy.eval.general_loss_before, rel=1e-4)


def test_memories_decoded_together_give_back_what_each_gives_alone(demo_base, tmp_path):
    """Recall measured a batch at a time (greedy decoding left-padded, token accuracy right-padded) is the same
    measurement as one memory at a time: prompts of several lengths, so that the padding shows if it leaks."""
    from memwarden.training.model import build
    from memwarden.training.recall import RecallMeter, load_items

    pairs = _write(tmp_path / "pairs.jsonl", FACTS + PROBE)
    spec = JobSpec(run_id="recall-batch", adapter="memories", base_model=str(demo_base), method="lora",
                   output_dir=str(tmp_path / "run"), train_file=pairs, holdout_file=pairs,
                   hyper=Hyper(max_seq_len=96, target_modules=ALL_LINEAR))
    built = build(spec)
    items = load_items(pairs, built.tokenizer, 96, 100, 0)
    assert len({len(i.prompt_ids) for i in items}) > 1
    alone = RecallMeter(built, 24, lambda: None, batch=1)
    together = RecallMeter(built, 24, lambda: None)
    texts = together._greedy([i.prompt_ids for i in items])
    assert texts == [alone._greedy([i.prompt_ids])[0] for i in items]
    assert any(texts)
    assert together._accuracies([i.example for i in items]) == [alone._accuracies([i.example])[0] for i in items]
    assert together.measure(items) == alone.measure(items)


def test_a_floor_above_the_token_accuracy_decodes_nothing_and_keeps_the_accuracy(demo_base, tmp_path):
    """The early stop's quick check: under its floor nothing is decoded (memories 0), at or above it the
    measurement is the same as without one."""
    from memwarden.training.model import build
    from memwarden.training.recall import RecallMeter, load_items

    pairs = _write(tmp_path / "pairs.jsonl", FACTS)
    spec = JobSpec(run_id="recall-floor", adapter="memories", base_model=str(demo_base), method="lora",
                   output_dir=str(tmp_path / "run"), train_file=pairs, holdout_file=pairs,
                   hyper=Hyper(max_seq_len=96, target_modules=ALL_LINEAR))
    meter = RecallMeter(build(spec), 24, lambda: None)
    items = load_items(pairs, meter.built.tokenizer, 96, 100, 0)
    full = meter.measure(items)
    assert full.memories == len(FACTS) and full.token_accuracy is not None
    decoded: list[int] = []
    greedy = meter._greedy
    meter._greedy = lambda prompts: decoded.append(len(prompts)) or greedy(prompts)  # type: ignore[method-assign]
    assert meter.measure(items, decode_from=full.token_accuracy + 0.01) == Recall(0, 0, full.token_accuracy)
    assert decoded == []
    assert meter.measure(items, decode_from=full.token_accuracy) == full and decoded == [len(FACTS)]
