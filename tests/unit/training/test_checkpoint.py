"""checkpoint.newest_of_job: which checkpoint a trainer resumes from (real files in a temp dir, tiny tensors)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch

from memwarden.training import checkpoint
from memwarden.training.preflight import GiveUp

KEYS = ["layer.lora_A.weight"]


def save(root, step, run_id="r1", effective_batch=4):
    meta = {"run_id": run_id, "method": "lora", "keys": KEYS, "effective_batch": effective_batch}
    return checkpoint.save(root, step, trainable={KEYS[0]: torch.full((2, 2), float(step))}, anchor=None,
                           state={"step": step}, meta=meta)


def newest(root, run_id="r1", effective_batch=4):
    return checkpoint.newest_of_job(root, run_id, "lora", KEYS, effective_batch)


def test_no_checkpoint_resumes_nothing(tmp_path):
    assert newest(tmp_path / "checkpoints") is None


def test_the_newest_complete_checkpoint_is_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    save(root, 4)
    save(root, 8)
    step, path, ck = newest(root)
    assert (step, path.name) == (8, "step-8")
    assert ck["meta"]["step"] == 8 and ck["trainable"][KEYS[0]][0, 0] == 8.0 and ck["state"] == {"step": 8}


def test_a_damaged_checkpoint_is_passed_over_for_the_one_before(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    save(root, 4)
    (save(root, 8) / "trainable.safetensors").write_bytes(b"torn")
    step, _, ck = newest(root)
    assert step == 4 and ck["trainable"][KEYS[0]][0, 0] == 4.0
    assert "step-8 is unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("other", [{"run_id": "r2"}, {"effective_batch": 8}])
def test_a_checkpoint_of_another_job_is_refused_naming_what_to_remove(tmp_path, other):
    root = tmp_path / "checkpoints"
    save(root, 4, **other)
    with pytest.raises(GiveUp, match=f"written by a different job .* remove {root} to start this job over"):
        newest(root)
