"""The trainer's eval report: written and read back as the same frozen value, and what promotion judges."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from memwarden.learning.eval_report import FILE, EvalReport, ExportCheck, Losses, Preference, Recall
from memwarden.learning.promotion import Gate, judge


def report(**changes) -> EvalReport:
    base = EvalReport("r1", "alice", "lora", 24, "/runs/r1/final", Losses(2.0, 1.5, 1.0, 1.01, 1.2, 1.21),
                      tokens_per_s=812.5, stopped_early=True,
                      lr=3e-3, fisher="/runs/r1/final/fisher.safetensors", fisher_samples=64,
                      fisher_combined_with_prior=True, export=ExportCheck(False, ("no adapter_config.json",)),
                      recall=Recall(40, 36, 0.95, 40, 30, 0.9), probe_recall_before=Recall(20, 18, 0.9),
                      probe_recall_after=Recall(20, 17, 0.88))
    return dataclasses.replace(base, **changes)


def test_round_trip(tmp_path):
    written = report()
    assert written.write(tmp_path) == tmp_path / FILE
    assert EvalReport.read(tmp_path) == written
    assert not [p for p in tmp_path.iterdir() if p.name != FILE]  # the temporary file is gone
    data = json.loads((tmp_path / FILE).read_text())
    assert data["eval"]["probe_loss_after"] == 1.01 and data["export"] == {"ok": False,
                                                                          "problems": ["no adapter_config.json"]}


def test_an_older_report_with_fewer_keys_still_reads():
    old = {"run_id": "r1", "adapter": "alice", "method": "lora", "step": 8, "final_dir": "/f",
           "eval": {"holdout_loss_before": 2.0, "holdout_loss_after": 1.0}, "unknown_later_key": 1}
    r = EvalReport.from_dict(old)
    assert r.eval == Losses(2.0, 1.0) and not r.stopped_early and r.export == ExportCheck() and r.tokens_per_s is None
    assert r.recall == Recall() and r.recall.fraction is None and r.judged()["recall"] is None
    assert r.judged()["recall_heldout"] is None and r.judged()["recall_heldout_memories"] == 0
    assert Recall.from_dict({"memories": 4, "recalled": 3, "token_accuracy": 0.5}) == Recall(4, 3, 0.5)


def test_a_report_without_its_identity_is_refused():
    with pytest.raises(TypeError):
        EvalReport.from_dict({"eval": {}})


def test_judged_is_what_promotion_reads():
    ev = report().judged()
    assert ev == {"holdout_loss_before": 2.0, "holdout_loss_after": 1.5, "probe_loss_before": 1.0,
                  "probe_loss_after": 1.01, "general_loss_before": 1.2, "general_loss_after": 1.21,
                  "tokens_per_s": 812.5, "step": 24, "stopped_early": True, "fisher_combined_with_prior": True,
                  "recall": 0.9, "recall_recalled": 36, "recall_memories": 40, "recall_token_accuracy": 0.95,
                  "recall_heldout": 0.75, "recall_heldout_recalled": 30, "recall_heldout_memories": 40,
                  "recall_heldout_token_accuracy": 0.9,
                  "probe_recall_before": 0.9, "probe_recall_before_recalled": 18,
                  "probe_recall_before_memories": 20, "probe_recall_before_token_accuracy": 0.9,
                  "probe_recall_after": 0.85, "probe_recall_after_recalled": 17,
                  "probe_recall_after_memories": 20, "probe_recall_after_token_accuracy": 0.88,
                  "dpo_steps": 0, "preference_pairs": 0, "preference_heldout": 0, "preference_accuracy_before": None,
                  "preference_accuracy_after": None, "recall_before_dpo": None, "recall_before_dpo_recalled": 0,
                  "recall_before_dpo_memories": 0, "recall_before_dpo_token_accuracy": None}
    assert judge(ev, Gate()).promote
    assert not judge(report(recall=Recall(40, 35, 0.9)).judged(), Gate()).promote


def test_a_dpo_stages_figures_are_written_read_back_and_judged(tmp_path):
    stage = Preference(pairs=30, heldout=10, steps=40, beta=0.1, accuracy_before=0.6, accuracy_after=0.9,
                       recall_before=Recall(40, 37, 0.97))
    written = report(preference=stage)
    written.write(tmp_path)
    assert EvalReport.read(tmp_path) == written
    ev = written.judged()
    assert (ev["dpo_steps"], ev["preference_heldout"], ev["preference_accuracy_after"]) == (40, 10, 0.9)
    assert (ev["recall_before_dpo_recalled"], ev["recall_before_dpo_memories"]) == (37, 40)
    assert judge(ev, Gate()).reason.endswith("held-out preferences 60% → 90%")
    assert not judge(report(preference=dataclasses.replace(stage, accuracy_after=0.6)).judged(), Gate()).promote


def test_the_module_needs_no_torch():
    code = "import sys, memwarden.learning.eval_report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
