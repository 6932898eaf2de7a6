"""The DPO stage's arithmetic on synthetic numbers: the sigmoid DPO loss, a reply's summed log-probability and
preference accuracy (no model)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")

import torch

from memwarden.training.data import IGNORE
from memwarden.training.dpo import dpo_losses, preference_accuracy, sequence_logps


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_at_the_reference_the_loss_is_log_2_and_the_margin_zero():
    losses, margins = dpo_losses(t(-5.0, -9.0), t(-7.0, -2.0), t(-5.0, -9.0), t(-7.0, -2.0), beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2)
    assert margins.tolist() == [0.0, 0.0]


def test_the_loss_is_minus_log_sigmoid_of_beta_times_the_gain_over_the_reference():
    # chosen rose by 3 nats over the reference, rejected fell by 2: margin β·5
    losses, margins = dpo_losses(t(-2.0), t(-9.0), t(-5.0), t(-7.0), beta=0.1)
    assert margins.item() == pytest.approx(0.5)
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))))
    worse, _ = dpo_losses(t(-8.0), t(-5.0), t(-5.0), t(-7.0), beta=0.1)
    assert worse.item() > math.log(2) > losses.item()


def test_the_gradient_raises_the_chosen_reply_and_lowers_the_rejected_one():
    chosen, rejected = t(-5.0).requires_grad_(), t(-6.0).requires_grad_()
    losses, _ = dpo_losses(chosen, rejected, t(-5.0), t(-6.0), beta=0.5)
    losses.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.25) and rejected.grad.item() == pytest.approx(0.25)


def test_a_replys_log_probability_sums_its_labelled_tokens_only():
    vocab = 4
    logits = torch.zeros(1, 4, vocab)
    logits[0, 1, 2] = math.log(3)  # position 1 predicts token 2 with p = 3/6
    labels = torch.tensor([[IGNORE, IGNORE, 2, 1]])  # the prompt is not the reply's: only tokens 2 and 3 count
    expected = math.log(3 / 6) + math.log(1 / 4)
    assert sequence_logps(logits, labels).item() == pytest.approx(expected, abs=1e-5)


def test_preference_accuracy_is_the_share_of_pairs_whose_chosen_reply_is_likelier():
    assert preference_accuracy([-1.0, -5.0, -3.0, -2.0], [-2.0, -4.0, -3.0, -9.0]) == 0.5  # a tie is not a win
    assert preference_accuracy([], []) is None
