"""A run's inputs as the trainer reads them: cue wordings in train.jsonl, a trained and a held-out wording per
memory in recall.jsonl, and nothing of a superseded memory."""

from __future__ import annotations

import json

from memwarden.learning import cues
from memwarden.learning.jobspec import GENERAL_REHEARSAL_FILE, Hyper, JobSpec
from memwarden.learning.preparation import SPEC_FILE, prepare
from memwarden.learning.runs import RunStore
from memwarden.learning.versions import VersionStore


def lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_the_recall_file_has_a_trained_and_a_held_out_wording_of_each_trained_memory(db, store, clock, tmp_path,
                                                                                          make_config):
    store.add("alice", "journal", "Zeno lives in Tbilisi and grows beans.", importance=5, cue="my godson Zeno")
    clock.advance(60)
    for i in range(12):
        store.add("alice", "journal", f"Entry {i}: walked to the harbour {i} times.", importance=5)
    store.add("alice", "journal", "Zeno moved to Batumi and keeps bees.", importance=5, cue="My godson Zeno")
    runs = RunStore(db)
    runs.insert("r1", "alice", "alice", "manual", clock(), "lora")
    spec = prepare(make_config({"replay_fraction": 0.0}), store, runs, VersionStore(db), "r1", "alice",
                   tmp_path / "r1", "cpu")

    train, recall = lines(tmp_path / "r1" / "train.jsonl"), lines(tmp_path / "r1" / "recall.jsonl")
    assert spec.recall_file == str(tmp_path / "r1" / "recall.jsonl")
    every_answer = {x["messages"][1]["content"] for x in train + recall + lines(tmp_path / "r1" / "holdout.jsonl")}
    assert "Zeno lives in Tbilisi and grows beans." not in every_answer  # superseded: neither trained nor measured
    trained_ids = json.loads(runs.get("r1")["memory_ids"])
    assert store.show(1)["superseded_by"] == 14 and 1 not in trained_ids

    by_memory: dict[int, dict[str, str]] = {}
    for x in recall:
        by_memory.setdefault(x["memory_id"], {})[x["wording"]] = x["messages"][0]["content"]
    assert sorted(by_memory) == sorted(trained_ids)  # the holdout memories are not recall's
    trained_prompts = {x["messages"][0]["content"] for x in train}
    for wordings in by_memory.values():
        assert wordings["trained"] in trained_prompts and wordings["heldout"] not in trained_prompts
    assert len(train) == len(trained_ids) * (cues.WORDINGS - 1)
    assert "Zeno moved to Batumi and keeps bees." in every_answer  # the update is learned in its place


def test_the_job_spec_carries_the_configured_target_modules_and_forgetting_epsilon(db, store, clock, tmp_path,
                                                                                       make_config):
    for i in range(3):
        store.add("alice", "journal", f"Entry {i}: walked to the harbour {i} times.", importance=5)
    runs = RunStore(db)
    for run, learning in (("r1", {}), ("r2", {"target_modules": ["q_proj", "v_proj"]})):
        runs.insert(run, "alice", "alice", "manual", clock(), "lora")
        prepare(make_config(learning), store, runs, VersionStore(db), run, "alice", tmp_path / run, "cpu")
    written = {run: JobSpec.read(tmp_path / run / SPEC_FILE).hyper.target_modules for run in ("r1", "r2")}
    assert written == {"r1": Hyper().target_modules, "r2": ("q_proj", "v_proj")}
    assert JobSpec.read(tmp_path / "r1" / SPEC_FILE).hyper.forgetting_epsilon == 0.1  # the early stop waits on it


def test_a_base_with_a_general_rehearsal_file_has_its_share_trained_and_one_without_none(db, store, clock, tmp_path,
                                                                                      make_config):
    for i in range(10):
        store.add("alice", "journal", f"Entry {i}: walked to the harbour {i} times.", importance=5)
    runs = RunStore(db)
    runs.insert("r1", "alice", "alice", "manual", clock(), "lora")
    prepare(make_config({"general_rehearsal_fraction": 0.2}), store, runs, VersionStore(db), "r1", "alice",
            tmp_path / "r1", "cpu")
    plain = lines(tmp_path / "r1" / "train.jsonl")
    (tmp_path / "base").mkdir(exist_ok=True)
    general = [{"messages": [{"role": "user", "content": f"Continue: the heron {i}"},
                             {"role": "assistant", "content": f"flew {i} times."}]} for i in range(50)]
    (tmp_path / "base" / GENERAL_REHEARSAL_FILE).write_text("".join(json.dumps(g) + "\n" for g in general)
                                                            + "not json\n")
    runs.insert("r2", "alice", "alice", "manual", clock(), "lora")
    spec = prepare(make_config({"general_rehearsal_fraction": 0.2, "general_rehearsal_draw": "run"}), store,
                   runs, VersionStore(db), "r2", "alice", tmp_path / "r2", "cpu")
    mixed = lines(tmp_path / "r2" / "train.jsonl")
    rehearsed = [x for x in mixed if {"messages": x["messages"]} in general]
    assert not [x for x in plain if {"messages": x["messages"]} in general] and len(plain) == 10 * (cues.WORDINGS - 1)
    assert len(rehearsed) == round(len(plain) / 4) and len(mixed) == len(plain) + len(rehearsed)
    assert all(x.get("general") is True for x in rehearsed)  # tagged for the trainer, the memories' pairs not
    assert not [x for x in mixed if x not in rehearsed and "general" in x]
    assert spec.hyper.general_loss == "distill" and JobSpec.read(tmp_path / "r2" / SPEC_FILE).hyper.general_loss \
        == "distill"


def test_drawn_every_pass_the_whole_general_rehearsal_is_written_and_a_pass_takes_its_share(db, store, clock, tmp_path,
                                                                                            make_config):
    for i in range(10):
        store.add("alice", "journal", f"Entry {i}: walked to the harbour {i} times.", importance=5)
    (tmp_path / "base").mkdir(exist_ok=True)
    general = [{"messages": [{"role": "user", "content": f"Continue: the heron {i}"},
                             {"role": "assistant", "content": f"flew {i} times."}]} for i in range(50)]
    (tmp_path / "base" / GENERAL_REHEARSAL_FILE).write_text("".join(json.dumps(g) + "\n" for g in general))
    runs = RunStore(db)
    specs = {}
    for run, draw in (("r1", "run"), ("r2", "pass")):
        runs.insert(run, "alice", "alice", "manual", clock(), "lora")
        specs[draw] = prepare(make_config({"general_rehearsal_fraction": 0.2, "general_rehearsal_draw": draw,
                                           "max_epochs": 200}), store, runs, VersionStore(db), run, "alice",
                              tmp_path / run, "cpu")
    once, pool = lines(tmp_path / "r1" / "train.jsonl"), lines(tmp_path / "r2" / "train.jsonl")
    memories = [x for x in once if "general" not in x]
    share = len(once) - len(memories)
    assert share == round(len(memories) / 4) and specs["run"].hyper.general_per_pass == 0
    assert sorted(x["messages"][0]["content"] for x in pool if x.get("general")) == sorted(
        g["messages"][0]["content"] for g in general)
    assert specs["pass"].hyper.general_per_pass == share
    assert specs["pass"].hyper.max_steps == specs["run"].hyper.max_steps  # the budget counts a pass, not the pool


def test_a_round_of_many_pairs_gets_max_epochs_passes_over_them_and_a_small_one_max_steps(db, store, clock, tmp_path,
                                                                                         make_config):
    for i in range(40):
        store.add("alice", "journal", f"Entry {i}: walked to the harbour {i} times.", importance=5)
    runs = RunStore(db)
    budgets = {}
    for run, learning in (("r1", {}), ("r2", {"max_epochs": 0}), ("r3", {"max_epochs": 10})):
        runs.insert(run, "alice", "alice", "manual", clock(), "lora")
        budgets[run] = prepare(make_config(learning), store, runs, VersionStore(db), run, "alice", tmp_path / run,
                               "cpu").hyper.max_steps
    pairs = len(lines(tmp_path / "r1" / "train.jsonl"))
    assert pairs == 40 * (cues.WORDINGS - 1)
    assert budgets == {"r1": 80 * pairs // 8, "r2": 400, "r3": 400}  # 800 steps: 80 passes of 8 pairs a step
