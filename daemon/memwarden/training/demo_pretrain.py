"""Pre-training of the demo base on its generated corpus (training/demo_corpus.py): plain next-token loss over
every token of each document (a chat exchange through the chat template, a sentence after BOS), in seeded random
batches, AdamW with a linear warm-up and a cosine decay. The result is a small language model: it speaks the
corpus's forms and the chat template, so that an adapter has something to build on and a general-text probe
measures something.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from memwarden.training.demo_corpus import Document


@dataclass(frozen=True)
class Pretrained:
    steps: int
    first_loss: float | None
    last_loss: float | None  # mean of the last 10 steps' losses
    seconds: float


def encode(tokenizer: Any, doc: Document, max_len: int) -> list[int]:
    if isinstance(doc, str):
        ids = tokenizer(doc)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|end_of_text|>")]
    else:
        ids = tokenizer.apply_chat_template(doc, tokenize=True, return_dict=False)
    return list(ids)[:max_len]


def pretrain(model: Any, tokenizer: Any, docs: list[Document], steps: int, *, batch: int = 32, lr: float = 3e-3,
             warmup: int = 20, max_len: int = 96, seed: int = 0) -> Pretrained:
    """Train `model` in place for `steps` optimizer steps of `batch` documents each."""
    import time

    if steps <= 0:
        return Pretrained(0, None, None, 0.0)
    started = time.monotonic()
    encoded = [encode(tokenizer, d, max_len) for d in docs]
    pad = tokenizer.pad_token_id
    rng = random.Random(f"pretrain:{seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = min(warmup, steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        rows = [encoded[rng.randrange(len(encoded))] for _ in range(batch)]
        width = max(len(r) for r in rows)
        ids = torch.full((batch, width), pad, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    tail = losses[-10:]
    return Pretrained(steps, round(losses[0], 4), round(sum(tail) / len(tail), 4), round(time.monotonic() - started, 1))
