"""Training data: JSONL conversations → the base model's chat template → token ids, loss on assistant tokens only.

Each line is {"messages": [{"role": "user"|"assistant"|"system", "content": "..."}, ...]}, in a training file
optionally with "general": true (the base's general rehearsal, learnt as hyper.general_loss says). A conversation is
rendered whole with `tokenizer.apply_chat_template`; the characters that belong to each assistant turn are found
by rendering the conversation up to that turn (with and without the generation prompt), so the turn's own
end-of-turn marker is learnt too and the headers are not. Tokens are mapped to those characters through the fast
tokenizer's offsets. Sequences are cut to max_seq_len; a conversation whose assistant tokens were all cut away is
dropped (and counted).

The order is a pure function of (seed, epoch): sample k of the run is `order(k // n)[k % n]`, so a resumed run,
or one whose micro-batch was halved after an OOM, sees exactly the same examples at the same step (a fresh draw
of general rehearsal per pass included).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("user", "assistant", "system")
IGNORE = -100


class DataError(ValueError):
    """A training file is unreadable or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE where the token is not an assistant token
    n_targets: int  # assistant tokens that are predicted (every labelled position but the first)
    general: bool = False  # general rehearsal, not a memory

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Split:
    name: str
    examples: list[Example]
    lines: int = 0
    dropped: int = 0  # conversations with no assistant token left after truncation
    truncated: int = 0

    @property
    def targets(self) -> int:
        return sum(e.n_targets for e in self.examples)


def read_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    """Every line's messages, validated; a bad line raises DataError naming file and line number."""
    return [messages for messages, _ in read_tagged(path)]


def read_tagged(path: str | Path) -> list[tuple[list[dict[str, str]], bool]]:
    """Every line's messages and whether it is tagged general, validated as read_conversations validates."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON: {exc.msg}") from exc
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: expected an object with a non-empty 'messages' list")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{i}] must be {{'role': one of {list(ROLES)}, 'content': string}}")
            clean.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in clean):
            raise DataError(f"{where}: no assistant message: nothing to learn")
        general = obj.get("general", False)
        if not isinstance(general, bool):
            raise DataError(f"{where}: 'general' must be true or false")
        out.append((clean, general))
    return out


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of its assistant turns."""
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        span = None
        try:
            before = _render(tokenizer, messages[:i], True) if i else None
            upto = _render(tokenizer, messages[: i + 1], False)
        except Exception:  # noqa: BLE001 - some templates refuse a prefix (e.g. no user turn yet): fall back
            before = upto = None
        if (
            before is not None
            and upto is not None
            and full.startswith(upto)
            and upto.startswith(before)
            and cursor <= len(before) < len(upto)
        ):
            span = (len(before), len(upto))
        if span is None:
            content = msg["content"].strip()
            pos = full.find(content, cursor) if content else -1
            if pos < 0:
                raise DataError(f"assistant turn {i} cannot be located in the rendered chat template")
            span = (pos, pos + len(content))
        spans.append(span)
        cursor = span[1]
    return full, spans


def encode(tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int, general: bool = False
           ) -> tuple[Example | None, bool]:
    """(example, truncated); the example is None when no assistant token survives truncation."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    truncated = len(ids) > max_seq_len
    ids, offsets = ids[:max_seq_len], offsets[:max_seq_len]
    labels = []
    for tok, (start, end) in zip(ids, offsets, strict=True):
        inside = any(start < b and end > a for a, b in spans) if end > start else False
        labels.append(tok if inside else IGNORE)
    n_targets = sum(1 for lab in labels[1:] if lab != IGNORE)
    if n_targets == 0:
        return None, truncated
    return Example(tuple(ids), tuple(labels), n_targets, general), truncated


def load_split(name: str, path: str | Path | None, tokenizer: Any, max_seq_len: int) -> Split:
    split = Split(name=name, examples=[])
    if path is None:
        return split
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("the base model's tokenizer is not a fast tokenizer (no offsets to mask the loss with)")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the base model's tokenizer has no chat template: conversations cannot be rendered")
    for lineno, (messages, general) in enumerate(read_tagged(path), 1):
        split.lines += 1
        try:
            example, truncated = encode(tokenizer, messages, max_seq_len, general)
        except DataError as exc:
            raise DataError(f"{path}: conversation {lineno}: {exc}") from exc
        split.truncated += truncated
        if example is None:
            split.dropped += 1
        else:
            split.examples.append(example)
    return split


class Order:
    """Sample k of the run (k counts over epochs) → an example index; a fresh seeded permutation per epoch.

    With a `pool` (the indices of the general-rehearsal examples) and `per_pass`, an epoch is every other example
    and a fresh seeded draw of `per_pass` of the pool's, so that a long run rehearses the whole pool a few times
    rather than the same few conversations at every pass."""

    def __init__(self, n: int, seed: int, pool: Sequence[int] = (), per_pass: int = 0):
        if n <= 0:
            raise DataError("no training examples")
        self.seed = seed
        drawn = set(pool) if per_pass > 0 else set()
        self.fixed = [i for i in range(n) if i not in drawn]
        self.pool, self.per_pass = sorted(drawn), min(per_pass, len(drawn))
        self.n = len(self.fixed) + self.per_pass
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        perm = self._perms.get(epoch)
        if perm is None:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            perm = self.fixed + (rng.sample(self.pool, self.per_pass) if self.per_pass else [])
            rng.shuffle(perm)
            self._perms = {epoch: perm}  # only the current epoch is needed
        return perm

    def indices(self, start: int, count: int) -> list[int]:
        return [self._perm(k // self.n)[k % self.n] for k in range(start, start + count)]


def collate(examples: list[Example], pad_id: int, device: Any = "cpu") -> dict[str, Any]:
    """Right-padded input_ids, attention_mask and labels tensors for one micro-batch."""
    import torch

    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device, non_blocking=True),
        "attention_mask": mask.to(device, non_blocking=True),
        "labels": labels.to(device, non_blocking=True),
        "tokens": sum(len(e) for e in examples),
    }
