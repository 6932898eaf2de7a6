"""`learning.augment = "ollama"`: the served model writes question/answer pairs about each memory, trained beside
the memory's cue wordings — self-generated training data, the way SEAL (Zweiger et al. 2025) has a model write
its own "implications" of a passage before it learns them.

Bounded, and never in the way of a run:
- at most MAX_MEMORIES memories per run are asked about (the most important first), one request at a time
  (the served model's own traffic queues beside it in Ollama, not behind a burst), for at most PAIRS_PER_MEMORY
  pairs of at most MAX_QUESTION / MAX_ANSWER characters, and NUM_PREDICT tokens per answer;
- each request has REQUEST_TIMEOUT seconds and all of them BUDGET seconds together;
- any failure falls back to the cue wordings alone (curator.py): an answer that is not the JSON asked for costs
  that memory its pairs; Ollama unreachable, an HTTP error or the time running out ends the asking for the run.

The request (the body sent to /api/chat, ollama-api.md) and the reading of its answer are pure functions here;
`ask` is the loop that sends them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memwarden.learning import cues
from memwarden.ollama.client import OllamaError

MAX_MEMORIES = 64
PAIRS_PER_MEMORY = 3
MAX_QUESTION = 300  # characters
MAX_ANSWER = 1000
NUM_PREDICT = 400  # tokens of one answer: three short pairs in JSON fit
REQUEST_TIMEOUT = 30.0  # seconds
BUDGET = 180.0  # seconds for all of a run's requests

Memory = Mapping[str, Any]
Chat = Callable[[dict[str, Any], float], Awaitable[str]]  # (request body, time-out) → the answer's content

SYSTEM = ("You write training data for a memory. Reply with JSON only: "
          '{"pairs": [{"question": "...", "answer": "..."}]}.')


@dataclass(frozen=True)
class Augmented:
    pairs: Mapping[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # memory id → (question, answer)
    asked: int = 0
    answered: int = 0  # answers that gave at least one pair
    stopped: str | None = None  # why asking stopped before every memory was asked, if it did

    def summary(self) -> dict[str, Any]:
        return {"asked": self.asked, "answered": self.answered, "pairs": sum(map(len, self.pairs.values())),
                "stopped": self.stopped}


def request(model: str, m: Memory, n: int = PAIRS_PER_MEMORY) -> dict[str, Any]:
    """The /api/chat body that asks `model` for `n` question/answer pairs about memory `m`."""
    cue = cues.cue_of(m)
    ex = cues.exchange(m)
    text = f"User: {ex[0]}\nAssistant: {ex[1]}" if ex else m["content"]
    about = f", about {cue.text}" if cue.explicit else ""
    user = (f"A memory ({cue.kind}, {cue.date}{about}):\n\"\"\"\n{text}\n\"\"\"\n"
            f"Write {n} questions someone could ask to recall this memory, each with the answer the memory gives. "
            f"Keep every answer true to the memory and short.")
    return {"model": model, "stream": False, "format": "json",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "options": {"num_predict": NUM_PREDICT, "temperature": 0.3}}


def read_pairs(content: str, n: int = PAIRS_PER_MEMORY) -> tuple[tuple[str, str], ...]:
    """The pairs of an answer ({"pairs": [{question, answer}]} or the bare list), at most `n`, each question and
    answer a non-empty string within bounds; ValueError when there are none."""
    try:
        data = json.loads(content)
    except ValueError:
        raise ValueError("the answer is not JSON") from None
    items = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("the answer has no list of pairs")
    out: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        q, a = item.get("question"), item.get("answer")
        if (isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip() and len(q) <= MAX_QUESTION
                and len(a) <= MAX_ANSWER and (q.strip(), a.strip()) not in out):
            out.append((q.strip(), a.strip()))
        if len(out) == n:
            break
    if not out:
        raise ValueError("the answer has no usable pair")
    return tuple(out)


async def ask(chat: Chat, model: str, memories: Sequence[Memory], budget: float = BUDGET,
              monotonic: Callable[[], float] = time.monotonic) -> Augmented:
    """Pairs for the most important memories, within the bounds above; whatever fails falls back to none."""
    deadline = monotonic() + budget
    chosen = sorted((m for m in memories if m.get("id") is not None),
                    key=lambda m: (-m["importance"], -(m.get("created_at") or 0.0), -m["id"]))[:MAX_MEMORIES]
    pairs: dict[int, tuple[tuple[str, str], ...]] = {}
    asked = 0
    for m in chosen:
        left = deadline - monotonic()
        if left <= 0:
            return Augmented(pairs, asked, len(pairs), "out of time")
        asked += 1
        try:
            content = await asyncio.wait_for(chat(request(model, m), min(REQUEST_TIMEOUT, left)),
                                             min(REQUEST_TIMEOUT, left))
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return Augmented(pairs, asked, len(pairs), "a request timed out")
        except (OllamaError, OSError) as exc:  # unreachable, an HTTP error: the rest keeps its cue wordings
            return Augmented(pairs, asked, len(pairs), str(exc)[:200] or type(exc).__name__)
        try:
            pairs[m["id"]] = read_pairs(content)
        except ValueError:
            continue  # this memory keeps its cue wordings
    return Augmented(pairs, asked, len(pairs), None)
