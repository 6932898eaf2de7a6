"""Recall: does the model give a memory back? Greedy decoding of each pair's response from its user turn through
the chat template, scored by key content (learning/recall_score.py), and teacher-forced token accuracy.

At most `sample` memories are decoded (a seeded choice, the same before and after training), each for at most
`max_new_tokens` tokens, so that recall stays cheap on a CPU. A conversation's prompt is everything before its
last assistant turn; the remembered response is that turn.

A line of the recall file may name its memory (`memory_id`) and its `wording`: "trained" (the default) or
"heldout" (a wording of the memory's cue never trained on, learning/cues.py). A memory's lines are chosen
together, and the two wordings are scored apart (Recall's `heldout_*`). A line without a memory id is a memory
of its own.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memwarden.learning.eval_report import Recall
from memwarden.learning.promotion import SLACK
from memwarden.learning.recall_score import recalled, token_accuracy
from memwarden.training.data import IGNORE, collate, encode, read_conversations
from memwarden.training.evaluation import autocast
from memwarden.training.model import Built

TRAINED, HELDOUT = "trained", "heldout"
# An early-stop check decodes its sample only when the sample's teacher-forced token accuracy is at least the
# recall target less this: greedy decoding feeds the model its own tokens, and a share of memories recalled above
# the share of their tokens predicted from the true prefix was never seen (in 618 checks of 25 runs the recalled
# share stayed under the token accuracy, BENCHMARKS.md, Recall 5l), while the decoding is most of a check's cost.
DECODE_MARGIN = 0.05


@dataclass(frozen=True)
class Item:
    prompt_ids: tuple[int, ...]
    response: str
    example: Any  # data.Example of the whole conversation (labels on the response)
    wording: str = TRAINED  # TRAINED | HELDOUT


def _tags(path: str | Path) -> list[tuple[Any, str]]:
    """Each non-blank line's (memory id, wording), in the order read_conversations reads the lines."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if line.strip():
            obj = json.loads(line)
            out.append((obj.get("memory_id", ("line", n)), HELDOUT if obj.get("wording") == HELDOUT else TRAINED))
    return out


def load_items(path: str | Path | None, tokenizer: Any, max_seq_len: int, sample: int, seed: int) -> list[Item]:
    """The lines of up to `sample` memories of the file as recall items, the memories chosen by seed."""
    if path is None or sample <= 0:
        return []
    convs = read_conversations(path)
    tags = _tags(path)
    groups: dict[Any, list[int]] = {}
    for i, (memory, _) in enumerate(tags):
        groups.setdefault(memory, []).append(i)
    lines = list(groups.values())
    picked = random.Random(f"{seed}:recall").sample(range(len(lines)), min(sample, len(lines)))
    items = []
    for i in sorted(n for g in picked for n in lines[g]):
        msgs = convs[i]
        last = max(n for n, m in enumerate(msgs) if m["role"] == "assistant")
        msgs = msgs[: last + 1]
        example, _ = encode(tokenizer, msgs, max_seq_len)
        if example is None:
            continue
        prompt = tokenizer.apply_chat_template(msgs[:last], tokenize=False, add_generation_prompt=True)
        ids = tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        items.append(Item(ids, msgs[last]["content"], example, tags[i][1]))
    return items


class RecallMeter:
    """Recall of items, `batch` of them decoded at a time: one forward pass a token for the whole batch costs little
    more than for one item on a small model, and decoding one at a time made recall checks two fifths of a run's
    time (BENCHMARKS.md, Recall 5f)."""

    def __init__(self, built: Built, max_new_tokens: int, check_stop: Callable[[], None], batch: int = 16):
        self.built = built
        self.max_new_tokens = max_new_tokens
        self.check_stop = check_stop
        self.batch = batch

    @torch.no_grad()
    def measure(self, items: list[Item], decode_from: float | None = None) -> Recall:
        """Recall of `items`; with `decode_from`, nothing is decoded (memories 0, the token accuracy kept) when the
        trained wordings' mean token accuracy is under it."""
        if not items:
            return Recall()
        model = self.built.model
        model.eval()
        try:
            n, hits, acc = self._score([i for i in items if i.wording == TRAINED], decode_from)
            held_n, held_hits, held_acc = self._score([i for i in items if i.wording == HELDOUT])
            return Recall(memories=n, recalled=hits, token_accuracy=acc, heldout_memories=held_n,
                          heldout_recalled=held_hits, heldout_token_accuracy=held_acc)
        finally:
            model.train()

    def _score(self, items: list[Item], decode_from: float | None = None) -> tuple[int, int, float | None]:
        chunks = [items[start : start + self.batch] for start in range(0, len(items), self.batch)]
        accs = []
        for chunk in chunks:
            self.check_stop()
            accs += self._accuracies([item.example for item in chunk])
        acc = round(sum(accs) / len(accs), 4) if accs else None
        if decode_from is not None and acc is not None and acc < decode_from:
            return 0, 0, acc
        hits = 0
        for chunk in chunks:
            self.check_stop()
            for item, text in zip(chunk, self._greedy([item.prompt_ids for item in chunk]), strict=True):
                hits += recalled(item.response, text)
        return len(items), hits, acc

    def _accuracies(self, examples: list[Any]) -> list[float]:
        """Teacher-forced token accuracy of each example's labelled tokens, in one right-padded forward pass: a
        causal model's logits at a token do not depend on the padding after it."""
        batch = collate(examples, self.built.tokenizer.pad_token_id, self.built.device)
        with autocast(self.built):
            logits = self.built.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = []
        for row, example in enumerate(examples):
            labels = example.labels[1:]
            pos = [i for i, lab in enumerate(labels) if lab != IGNORE]
            predicted = logits[row, :-1][pos].argmax(-1).tolist()
            out.append(token_accuracy(predicted, [labels[i] for i in pos]))
        return out

    def _greedy(self, prompts: list[tuple[int, ...]]) -> list[str]:
        """Each prompt's greedy continuation, decoded together: left-padded, so that every row's next token is the
        last column, with the attention mask (and from it the positions) leaving the padding out."""
        tok = self.built.tokenizer
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        with autocast(self.built):
            out = self.built.model.generate(
                input_ids=ids.to(self.built.device), attention_mask=mask.to(self.built.device),
                max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id)
        return [tok.decode(row[width:], skip_special_tokens=True) for row in out]


class EarlyStop:
    """Train until recall: every `every` steps, recall on a seeded sample of `check` of this run's memories; when
    the sample reaches `target`, recall on all of them (the sample the run reports), and stop when that does too.
    The full measurement of the step training stopped at is the run's final recall (no second decoding).

    With the earlier rounds' probe watched (`watch_probe`), the run stops only once the probe is also back within
    `epsilon` of its recall before the run, as the gate will ask (learning/promotion.py): a sample of `check` of
    its memories first, then all of them, whose measurement is the run's probe recall after."""

    def __init__(self, meter: RecallMeter, items: list[Item], target: float, every: int, check: int, seed: int):
        self.meter, self.items, self.target, self.every = meter, items, target, every
        self.check, self.seed = check, seed
        self.sample = self._sample(items)
        self.final: tuple[int, Recall] | None = None
        self.probe: list[Item] = []
        self.probe_sample: list[Item] = []
        self.probe_floor = 0.0
        self.final_probe: tuple[int, Recall] | None = None

    def _sample(self, items: list[Item]) -> list[Item]:
        """`check` memories in their trained wording: a held-out wording counts toward no target, so a sample of
        the file's lines would rest the check on half as many memories."""
        trained = [i for i in items if i.wording == TRAINED]
        chosen = sorted(random.Random(f"{self.seed}:check").sample(range(len(trained)), min(self.check,
                                                                                          len(trained))))
        return [trained[i] for i in chosen]

    def watch_probe(self, items: list[Item], before: Recall | None, epsilon: float) -> None:
        """Stop only once recall on `items` is at least its share `before` the run less `epsilon` (an epsilon of 1
        or more, or a probe not measured before: not watched)."""
        if items and before is not None and before.fraction is not None and epsilon < 1:
            self.probe, self.probe_sample = items, self._sample(items)
            self.probe_floor = before.fraction - epsilon

    def due(self, step: int) -> bool:
        return self.every > 0 and self.target > 0 and bool(self.items) and step % self.every == 0

    def reached(self, step: int) -> tuple[bool, Recall]:
        """Whether recall reached the target at `step` (and the probe its floor), and the last measurement made
        of this run's memories. The sample is decoded only once its token accuracy is within DECODE_MARGIN of
        the target."""
        quick = self.meter.measure(self.sample, decode_from=self.target - DECODE_MARGIN)
        if (quick.fraction or 0.0) < self.target:
            return False, quick
        full = quick if len(self.sample) == len(self.items) else self.meter.measure(self.items)
        self.final = (step, full)
        return (full.fraction or 0.0) >= self.target and self._probe_kept(step), full

    def _probe_kept(self, step: int) -> bool:
        if not self.probe:
            return True
        quick = self.meter.measure(self.probe_sample)
        if (quick.fraction or 0.0) < self.probe_floor - SLACK:
            return False
        full = quick if len(self.probe_sample) == len(self.probe) else self.meter.measure(self.probe)
        self.final_probe = (step, full)
        return (full.fraction or 0.0) >= self.probe_floor - SLACK

    def final_recall(self, step: int) -> Recall:
        if self.final is not None and self.final[0] == step:
            return self.final[1]
        return self.meter.measure(self.items)

    def final_probe_recall(self, step: int, items: list[Item]) -> Recall:
        """Recall on the probe `items` at `step`: the measurement made there, if any."""
        if self.final_probe is not None and self.final_probe[0] == step:
            return self.final_probe[1]
        return self.meter.measure(items)
