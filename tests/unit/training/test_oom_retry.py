"""A step that runs out of memory, on a stand-in for the trainer (no model): the micro-batch halved at the same
effective batch, the partial gradient and the random state of the failed try dropped, the give-up at 1."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

import torch

from memwarden.training.oom_retry import accumulate_step
from memwarden.training.preflight import GiveUp


class Events:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    def emit(self, event: str, **fields) -> None:
        self.seen.append({"event": event, **fields})


def stand_in(micro_batch: int, grad_accum: int, inject_at: int | None = None):
    return SimpleNamespace(spec=SimpleNamespace(inject_oom_at_step=inject_at),
                           built=SimpleNamespace(device=torch.device("cpu")), emit=Events(),
                           micro_batch=micro_batch, grad_accum=grad_accum, effective=micro_batch * grad_accum,
                           step=6, oom_injected=False)


@pytest.fixture
def weight():
    return torch.nn.Parameter(torch.zeros(3))


def attempts(weight, fail_first_with: BaseException | None):
    """An accumulation that adds a gradient and a random draw, then fails its first try after that gradient."""
    tries: list[torch.Tensor] = []

    def accumulate() -> torch.Tensor:
        draw = torch.rand(3)
        (weight * draw).sum().backward()
        tries.append(draw)
        if fail_first_with is not None and len(tries) == 1:
            raise fail_first_with
        return draw

    return accumulate, tries


def test_an_oom_halves_the_micro_batch_and_retries_the_same_step_from_a_clean_gradient(weight):
    t = stand_in(micro_batch=4, grad_accum=1)
    accumulate, tries = attempts(weight, torch.OutOfMemoryError("CUDA out of memory"))
    result = accumulate_step(t, torch.optim.SGD([weight], lr=0.1), accumulate, stage="dpo")
    assert (t.micro_batch, t.grad_accum) == (2, 2)  # the same effective batch, in smaller pieces
    assert len(tries) == 2 and torch.equal(tries[0], tries[1])  # the retry draws as the failed try did
    assert torch.equal(weight.grad, result)  # one try's gradient, not two
    assert t.emit.seen == [{"event": "oom_retry", "step": 7, "micro_batch": 2, "grad_accum": 2,
                            "error": "OutOfMemoryError: CUDA out of memory", "stage": "dpo"}]


def test_an_oom_at_micro_batch_1_gives_up_naming_the_step(weight):
    t = stand_in(micro_batch=1, grad_accum=4)
    accumulate, _ = attempts(weight, RuntimeError("CUDA error: out of memory"))
    with pytest.raises(GiveUp, match="out of memory at step 7 even with micro_batch 1"):
        accumulate_step(t, torch.optim.SGD([weight], lr=0.1), accumulate)
    assert t.emit.seen == [] and weight.grad is None


def test_any_other_error_leaves_no_partial_gradient_and_the_steps_random_state(weight):
    t = stand_in(micro_batch=4, grad_accum=1)
    accumulate, tries = attempts(weight, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        accumulate_step(t, torch.optim.SGD([weight], lr=0.1), accumulate)
    assert weight.grad is None and t.micro_batch == 4 and t.emit.seen == []
    assert torch.equal(torch.rand(3), tries[0])  # what comes next draws as the abandoned step did


def test_the_injected_oom_fires_once_at_the_step_the_job_names(weight):
    t = stand_in(micro_batch=4, grad_accum=1, inject_at=7)
    accumulate, tries = attempts(weight, None)
    accumulate_step(t, torch.optim.SGD([weight], lr=0.1), accumulate)
    assert len(tries) == 1 and t.oom_injected and t.micro_batch == 2
    assert "inject_oom_at_step=7" in t.emit.seen[0]["error"]
    accumulate_step(t, torch.optim.SGD([weight], lr=0.1), accumulate)  # the same step again: no second OOM
    assert t.micro_batch == 2 and len(t.emit.seen) == 1
