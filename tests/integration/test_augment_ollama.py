"""learning.augment against the Ollama simulator, a real separate process: the served model's pairs come back
through OllamaClient.chat, and anything else falls back to the cue wordings."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from memwarden.learning.augment import ask
from memwarden.ollama.client import OllamaClient
from support.ollama_double import GiB, OllamaDouble, sim_gpu

MODEL = "llama3.2:1b"
PAIRS = {"pairs": [{"question": "Where does Zeno live now?", "answer": "In Batumi."},
                   {"question": "What does Zeno keep?", "answer": "Bees."}]}


def mem(i):
    return {"id": i, "profile": "alice", "kind": "journal", "content": f"Zeno moved to Batumi and keeps bees ({i}).",
            "response": None, "importance": 5, "created_at": 1_767_225_600.0, "cue": f"my godson Zeno {i}"}


@pytest.fixture
def make_sim():
    workdir = Path(tempfile.mkdtemp(prefix="aug", dir="/tmp"))
    made: list[OllamaDouble] = []

    def start(response: str) -> OllamaDouble:
        od = OllamaDouble(sim_gpu(workdir / "gpu.json", 12 * GiB), [{"name": MODEL, "size": GiB, "family": "llama"}],
                          response=response, workdir=workdir / f"od{len(made)}", load_seconds=0.01)
        made.append(od)
        return od.start()

    yield start
    for od in made:
        od.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)


async def test_the_served_models_pairs_come_back(make_sim):
    od = make_sim(json.dumps(PAIRS))
    client = OllamaClient(od.url)
    try:
        result = await ask(client.chat, MODEL, [mem(1), mem(2)])
    finally:
        await client.close()
    assert result.stopped is None and result.asked == 2
    assert result.pairs[1] == (("Where does Zeno live now?", "In Batumi."), ("What does Zeno keep?", "Bees."))


async def test_an_answer_that_is_not_pairs_and_an_unknown_model_fall_back(make_sim):
    od = make_sim("The sky is blue because molecules scatter blue light.")
    client = OllamaClient(od.url)
    try:
        prose = await ask(client.chat, MODEL, [mem(1), mem(2)])
        unknown = await ask(client.chat, "absent:7b", [mem(1), mem(2)])
    finally:
        await client.close()
    assert prose.pairs == {} and prose.asked == 2 and prose.stopped is None  # every memory was tried
    assert unknown.pairs == {} and unknown.asked == 1 and "404" in unknown.stopped  # the first failure ends it


async def test_ollama_gone_falls_back_at_once(make_sim):
    od = make_sim(json.dumps(PAIRS))
    url = od.url
    od.stop()
    client = OllamaClient(url, timeout=2.0)
    try:
        result = await ask(client.chat, MODEL, [mem(1), mem(2)])
    finally:
        await client.close()
    assert result.pairs == {} and result.asked == 1 and "unreachable" in result.stopped
