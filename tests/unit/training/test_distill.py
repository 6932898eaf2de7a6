"""General rehearsal learnt by distillation from the base: the KL term on synthetic logits, and the micro-batch's
loss on a tiny random Llama with a LoRA adapter (general examples distilled, memories kept on cross-entropy)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import torch

from memwarden.training import distill
from memwarden.training.data import IGNORE, DataError, Example, collate, read_tagged
from memwarden.training.distill import FULL_NOTE, SupervisedLoss, kl_from_base_sum
from memwarden.training.evaluation import token_loss_sum
from memwarden.training.model import Built

VOCAB = 32


def tiny_model(peft: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj", "up_proj"]))
    model.eval()  # no dropout anywhere: the comparisons below are exact
    return model


def built(model) -> Built:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return Built(model, None, torch.device("cpu"), None, params, 1e-3)


def example(ids: list[int], answer_from: int, general: bool = False) -> Example:
    labels = tuple(IGNORE if i < answer_from else t for i, t in enumerate(ids))
    return Example(tuple(ids), labels, sum(1 for lab in labels[1:] if lab != IGNORE), general)


CHUNK = [example([1, 5, 7, 9, 11, 2], 3, general=True), example([1, 4, 6, 8, 2], 2),
         example([1, 12, 13, 14, 15, 16, 2], 4, general=True)]


def forward(model, chunk):
    batch = collate(chunk, 0)
    return batch, model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def perturb(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))


def test_the_kl_term_is_zero_at_the_base_and_positive_away_from_it_on_labelled_positions_only():
    torch.manual_seed(3)
    base = torch.randn(2, 5, VOCAB)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5], [IGNORE, 7, 8, IGNORE, IGNORE]])
    assert kl_from_base_sum(base.clone(), base, labels).item() == pytest.approx(0.0, abs=1e-6)
    moved = base.clone()
    moved[0, 3] += torch.randn(VOCAB)  # position 3 predicts token 4, a labelled one
    assert kl_from_base_sum(moved, base, labels).item() > 0.01
    unlabelled = base.clone()
    unlabelled[1, 3] += torch.randn(VOCAB)  # position 3 of row 1 predicts an unlabelled token
    unlabelled[:, -1] += torch.randn(VOCAB)  # the last position predicts nothing
    assert kl_from_base_sum(unlabelled, base, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_a_general_example_costs_nothing_while_the_adapter_is_the_base_and_pulls_it_back_once_moved():
    model = tiny_model()
    loss = SupervisedLoss(built(model), "distill", lambda: torch.autocast("cpu", enabled=False))
    general = [e for e in CHUNK if e.general]
    batch, logits = forward(model, general)
    assert loss.loss_sum(general, batch, logits).item() == pytest.approx(0.0, abs=1e-5)  # LoRA's B starts at 0
    perturb(model)
    batch, logits = forward(model, general)
    s = loss.loss_sum(general, batch, logits)
    assert s.item() > 1e-3
    s.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)  # the base stays frozen


def test_memories_keep_cross_entropy_beside_distilled_general_examples():
    model = tiny_model()
    perturb(model)
    batch, logits = forward(model, CHUNK)
    labels = batch["labels"]
    memories_only = labels.clone()
    memories_only[[0, 2]] = IGNORE
    with torch.no_grad():
        distilled = SupervisedLoss(built(model), "distill", lambda: torch.autocast("cpu", enabled=False))
        with model.disable_adapter():
            base_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = (token_loss_sum(logits, memories_only)
                    + kl_from_base_sum(logits[[0, 2]], base_logits[[0, 2]], labels[[0, 2]]))
        assert distilled.loss_sum(CHUNK, batch, logits).item() == pytest.approx(expected.item(), rel=1e-5)
        assert expected.item() != pytest.approx(token_loss_sum(logits, labels).item(), rel=1e-3)
        as_text = SupervisedLoss(built(model), "ce", lambda: torch.autocast("cpu", enabled=False))
        assert as_text.loss_sum(CHUNK, batch, logits).item() == pytest.approx(token_loss_sum(logits, labels).item())
        untagged = [Example(e.input_ids, e.labels, e.n_targets) for e in CHUNK]
        assert (distilled.loss_sum(untagged, batch, logits).item()
                == pytest.approx(token_loss_sum(logits, labels).item()))


class Counted:
    """Counts the model's forward passes with its adapter disabled (the base's)."""

    def __init__(self, model):
        self.model, self.base_passes = model, 0
        inner = model.disable_adapter

        def disable_adapter():
            self.base_passes += 1
            return inner()

        model.disable_adapter = disable_adapter


def test_the_base_read_once_before_the_steps_gives_the_loss_and_gradient_read_in_each_step():
    model = tiny_model()
    perturb(model)
    counted = Counted(model)
    fresh = SupervisedLoss(built(model), "distill", lambda: torch.autocast("cpu", enabled=False))
    batch, logits = forward(model, CHUNK)
    expected = fresh.loss_sum(CHUNK, batch, logits)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert counted.base_passes == 1
    model.zero_grad()
    remembered = SupervisedLoss(built(model), "distill", lambda: torch.autocast("cpu", enabled=False))
    assert remembered.remember_base([*CHUNK, example([1, 3, 2], 1)], pad_id=0)
    assert counted.base_passes == 2  # the two general examples, in one chunk
    for _ in range(3):  # the steps read no base
        batch, logits = forward(model, CHUNK)
        s = remembered.loss_sum(CHUNK, batch, logits)
    assert counted.base_passes == 2
    assert s.item() == pytest.approx(expected.item(), rel=1e-5)
    s.backward()
    for name, grad in expected_grads.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6), name
    other = [example([1, 5, 7, 9, 11, 2], 3, general=True)]  # equal to CHUNK[0], but not the split's own
    batch, logits = forward(model, other)
    remembered.loss_sum(other, batch, logits)
    assert counted.base_passes == 3


def test_the_base_is_not_remembered_past_its_budget_for_cross_entropy_or_without_general_examples(monkeypatch):
    model = tiny_model()
    assert not SupervisedLoss(built(model), "ce", lambda: torch.autocast("cpu", enabled=False)).remember_base(
        CHUNK, pad_id=0)
    loss = SupervisedLoss(built(model), "distill", lambda: torch.autocast("cpu", enabled=False))
    assert not loss.remember_base([e for e in CHUNK if not e.general], pad_id=0)
    tokens = sum(e.n_targets for e in CHUNK if e.general)
    monkeypatch.setattr(distill, "BASE_CACHE_BYTES", tokens * VOCAB * 4 - 1)
    assert not loss.remember_base(CHUNK, pad_id=0) and not loss.base_rows
    monkeypatch.setattr(distill, "BASE_CACHE_BYTES", tokens * VOCAB * 4)
    assert loss.remember_base(CHUNK, pad_id=0) and len(loss.base_rows) == 2


def test_a_full_fine_tune_has_no_adapter_to_disable_and_learns_general_text_by_cross_entropy():
    model = tiny_model(peft=False)
    b = built(model)
    loss = SupervisedLoss(b, "distill", lambda: torch.autocast("cpu", enabled=False))
    batch, logits = forward(model, CHUNK)
    assert loss.loss_sum(CHUNK, batch, logits).item() == pytest.approx(token_loss_sum(logits, batch["labels"]).item())
    assert b.notes == [FULL_NOTE]


def test_the_training_file_tags_general_lines_and_a_tag_that_is_not_a_boolean_is_named(tmp_path):
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in (
        {"messages": conv}, {"messages": conv, "general": True}, {"messages": conv, "general": False})) + "\n")
    assert [general for _, general in read_tagged(path)] == [False, True, False]
    path.write_text(json.dumps({"messages": conv, "general": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: 'general' must be true or false"):
        read_tagged(path)
