"""learning.augment: the request, the reading of an answer, and the bounds of the asking (a fake chat here; the
Ollama simulator in tests/integration/test_augment_ollama.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from memwarden.learning import augment
from memwarden.learning.augment import MAX_MEMORIES, PAIRS_PER_MEMORY, ask, read_pairs, request
from memwarden.learning.cues import wordings
from memwarden.learning.curator import curate
from memwarden.learning.supervisor import LearningSupervisor
from memwarden.ollama.client import OllamaError
from support.clock import Clock

from .conftest import FakeArbiter, FakeExecutor, Script


def mem(i, importance=5, **kw):
    return {"id": i, "profile": "alice", "kind": "journal", "content": f"Entry {i}: rain on the harbour.",
            "response": None, "importance": importance, "created_at": 1_767_225_600.0 + i, "adapter": "alice", **kw}


def answer(*pairs):
    return json.dumps({"pairs": [{"question": q, "answer": a} for q, a in pairs]})


def test_the_request_asks_the_served_model_for_json_pairs_about_the_memory():
    body = request("llama3.2:1b", mem(1, cue="the harbour"))
    assert (body["model"], body["stream"], body["format"]) == ("llama3.2:1b", False, "json")
    user = body["messages"][-1]["content"]
    assert "Entry 1: rain on the harbour." in user and "about the harbour" in user and "2026-01-01" in user
    assert f"Write {PAIRS_PER_MEMORY} questions" in user and body["options"]["num_predict"] == augment.NUM_PREDICT
    chat = request("m", {**mem(2), "kind": "conversation", "content": "Who is Mira?", "response": "My sister."})
    assert "User: Who is Mira?\nAssistant: My sister." in chat["messages"][-1]["content"]


def test_an_answer_gives_at_most_n_clean_pairs_or_none():
    assert read_pairs(answer(("Where?", " The harbour. "), ("When?", "Monday"))) == (("Where?", "The harbour."),
                                                                                    ("When?", "Monday"))
    bare = json.dumps([{"question": "q", "answer": "a"}, "junk", {"question": "", "answer": "x"},
                       {"question": "q", "answer": "a"}, {"question": "x" * 301, "answer": "a"}])
    assert read_pairs(bare) == (("q", "a"),)
    assert len(read_pairs(answer(*((f"q{i}", "a") for i in range(9))))) == PAIRS_PER_MEMORY
    for bad in ("The sky is blue.", "{}", json.dumps({"pairs": [{"question": 1, "answer": "a"}]})):
        with pytest.raises(ValueError):
            read_pairs(bad)


class Chat:
    def __init__(self, *answers, clock=None, each=0.0):
        self.answers = list(answers)
        self.asked: list[dict] = []
        self.clock, self.each = clock, each

    async def __call__(self, body, timeout):
        self.asked.append(body)
        if self.clock is not None:
            self.clock.advance(self.each)
        reply = self.answers.pop(0) if self.answers else answer(("q", "a"))
        if isinstance(reply, Exception):
            raise reply
        return reply


async def test_the_most_important_memories_are_asked_first_and_at_most_max_memories():
    memories = [mem(i, importance=1 + i % 10) for i in range(MAX_MEMORIES + 20)]
    chat = Chat()
    result = await ask(chat, "m", memories)
    assert result.asked == MAX_MEMORIES == len(result.pairs) and result.stopped is None
    asked_ids = {int(b["messages"][-1]["content"].split("Entry ")[1].split(":")[0]) for b in chat.asked}
    expected = sorted(memories, key=lambda m: (-m["importance"], -m["created_at"]))[:MAX_MEMORIES]
    assert asked_ids == {m["id"] for m in expected}  # the least important wait


async def test_a_bad_answer_costs_one_memory_and_a_failure_ends_the_asking():
    chat = Chat("not json", answer(("q2", "a2")), OllamaError("Ollama at http://x unreachable"), answer(("q", "a")))
    result = await ask(chat, "m", [mem(i, importance=9 - i) for i in range(4)])
    assert result.pairs == {1: (("q2", "a2"),)} and result.asked == 3 and result.answered == 1
    assert result.stopped == "Ollama at http://x unreachable"


async def test_the_time_budget_bounds_the_asking():
    clock = Clock(100.0)
    chat = Chat(clock=clock, each=40.0)
    result = await ask(chat, "m", [mem(i) for i in range(10)], budget=100.0, monotonic=clock)
    assert result.asked == 3 and result.stopped == "out of time" and len(result.pairs) == 3


def test_written_pairs_are_trained_beside_the_wordings_but_never_in_the_held_out_one():
    memories = [mem(i) for i in range(3)]
    held = wordings(memories[0]).heldout
    extra = {0: (("Where did it rain?", "On the harbour."), (held, "Entry 0: rain on the harbour."))}
    c = curate(memories, holdout_fraction=0.01, replay_fraction=0, extra=extra)
    pairs = [p for p in c.train + c.holdout if p.memory_id == 0]
    assert ("Where did it rain?", "On the harbour.") in {(p.user, p.assistant) for p in pairs}
    assert held not in {p.user for p in pairs} and c.stats["augmented_pairs"] == 2


class FakeOllama:
    def __init__(self, reply: str):
        self.reply, self.bodies = reply, []

    async def chat(self, body, timeout=None):
        self.bodies.append(body)
        return self.reply


@pytest.mark.parametrize("augment", ["ollama", ""])
async def test_a_run_trains_the_pairs_the_served_model_wrote_when_augment_is_on(augment, db, store, clock, tmp_path,
                                                                                make_config):
    config = make_config()
    config = replace(config, learning=replace(config.learning, augment=augment, ollama_base="llama3.2:1b"))
    ollama = FakeOllama(answer(("Which bird was back?", "The heron.")))
    for i in range(6):
        store.add("alice", "journal", f"Walked to the mill {i}; the heron was back.", importance=5)
    sup = LearningSupervisor(config, db, store, FakeArbiter(), ollama, tmp_path / "state", "none", clock=clock,
                             executor=FakeExecutor(Script()))
    sup.start("alice")
    await sup.task
    train = (tmp_path / "state" / "runs" / sup.history(1)[0]["id"] / "train.jsonl").read_text()
    if augment:
        assert len(ollama.bodies) == 6 and {b["model"] for b in ollama.bodies} == {"llama3.2:1b"}
        assert "Which bird was back?" in train
    else:
        assert ollama.bodies == [] and "Which bird was back?" not in train
