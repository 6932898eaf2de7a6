from dataclasses import replace

import pytest

from memwarden.learning.jobspec import Hyper, JobSpec
from memwarden.training.preflight import GiveUp, validate


@pytest.fixture
def spec(tmp_path) -> JobSpec:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "train.jsonl").write_text("")
    return JobSpec(run_id="r", adapter="a", base_model=str(tmp_path / "base"), method="lora",
                   output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "train.jsonl"),
                   holdout_file=str(tmp_path / "train.jsonl"), recall_file=str(tmp_path / "train.jsonl"))


def test_a_valid_spec_passes(spec):
    validate(spec)


def test_dpo_settings_and_the_preference_file_are_checked(spec, tmp_path):
    bad = replace(spec, preference_file=str(tmp_path / "no-prefs.jsonl"),
                  hyper=Hyper(dpo_steps=-1, dpo_beta=0.0, dpo_lr=float("nan")))
    with pytest.raises(GiveUp) as err:
        validate(bad)
    message = str(err.value)
    assert "preference_file" in message and "no-prefs.jsonl" in message
    assert "hyper.dpo_steps must be an integer ≥ 0" in message
    assert "hyper.dpo_beta must be positive, got 0.0" in message and "hyper.dpo_lr must be positive" in message


def test_recall_settings_and_file_are_checked(spec, tmp_path):
    bad = replace(spec, recall_file=str(tmp_path / "gone.jsonl"), general_file=str(tmp_path / "no-probe.jsonl"),
                  hyper=Hyper(recall_sample=-1, recall_max_new_tokens=0, recall_every=-1, recall_check_sample=0,
                              min_recall=1.5, forgetting_epsilon=-0.1))
    with pytest.raises(GiveUp) as err:
        validate(bad)
    message = str(err.value)
    assert "recall_file" in message and "gone.jsonl" in message
    assert "general_file" in message and "no-probe.jsonl" in message
    assert "hyper.recall_sample must be an integer ≥ 0" in message
    assert "hyper.recall_max_new_tokens must be an integer ≥ 1" in message
    assert "hyper.recall_every must be an integer ≥ 0" in message
    assert "hyper.recall_check_sample must be an integer ≥ 1" in message
    assert "hyper.min_recall must be in [0, 1], got 1.5" in message
    assert "hyper.forgetting_epsilon must be ≥ 0, got -0.1" in message


def test_the_general_rehearsal_loss_is_ce_or_distill(spec):
    validate(replace(spec, hyper=Hyper(general_loss="distill")))
    with pytest.raises(GiveUp, match=r"hyper.general_loss must be one of \['ce', 'distill'\], got 'kl'"):
        validate(replace(spec, hyper=Hyper(general_loss="kl")))
