"""preferences.split: which of a run's preference memories the DPO stage trains and which it only measures."""

from __future__ import annotations

import json

from memwarden.learning.preferences import FILE, split, write
from memwarden.learning.preparation import prepare
from memwarden.learning.runs import RunStore
from memwarden.learning.versions import VersionStore


def pref(i: int) -> dict:
    return {"id": i, "kind": "preference", "prompt": f"How should I greet guest {i}?", "chosen": f"Warmly, {i}.",
            "rejected": f"Coldly, {i}."}


PREFS = [pref(i) for i in range(1, 21)]
FACT = {"id": 99, "kind": "journal", "content": "walked by the river"}


def test_a_share_is_held_out_the_same_way_for_the_same_seed_and_not_for_another():
    learned = {m["id"] for m in PREFS} | {99}
    first = split([*PREFS, FACT], learned, (), 0.25, seed=42)
    assert len(first.heldout) == 5 and len(first.train) == 15
    assert {m["id"] for m in first.train} | {m["id"] for m in first.heldout} == set(range(1, 21))
    assert split([*PREFS, FACT], learned, (), 0.25, seed=42) == first
    assert split([*PREFS, FACT], learned, (), 0.25, seed=7).heldout != first.heldout


def test_the_memories_held_out_of_the_supervised_stage_are_held_out_first():
    learned = {m["id"] for m in PREFS}
    s = split(PREFS, learned, {3, 17}, 0.25, seed=42)
    assert {3, 17} <= {m["id"] for m in s.heldout} and len(s.heldout) == 5
    assert not {3, 17} & {m["id"] for m in s.train}


def test_only_the_runs_preferences_are_split_and_never_all_of_them():
    s = split([*PREFS, FACT], {1, 2, 99}, (), 0.5, seed=42)  # the others are not this run's (duplicates, capped)
    assert len(s.train) == 1 and len(s.heldout) == 1
    assert split(PREFS, {1}, (), 0.25, seed=42).train == ()  # one pair: nothing to hold out, no DPO stage
    assert split([FACT], {99}, (), 0.25, seed=42).heldout == ()


def test_the_file_says_which_pairs_are_held_out(tmp_path):
    s = split(PREFS[:4], {1, 2, 3, 4}, (), 0.25, seed=42)
    assert write(tmp_path / FILE, s) == 4
    lines = [json.loads(x) for x in (tmp_path / FILE).read_text().splitlines()]
    assert sorted((x["memory_id"], x["heldout"]) for x in lines) == sorted(
        [(m["id"], False) for m in s.train] + [(m["id"], True) for m in s.heldout])
    assert lines[0].keys() == {"memory_id", "prompt", "chosen", "rejected", "heldout"}


def test_prepare_writes_the_preference_file_into_the_spec_only_with_dpo_steps(db, store, clock, tmp_path,
                                                                              make_config):
    for i in range(8):
        store.add("alice", "preference", None, importance=5, prompt=f"Which tea for guest {i}?",
                  chosen=f"Green tea for guest {i}.", rejected=f"Nothing for guest {i}.")
    runs = RunStore(db)
    for run, steps in (("r1", 12), ("r2", 0)):
        runs.insert(run, "alice", "alice", "manual", clock(), "lora")
        spec = prepare(make_config({"dpo_steps": steps, "dpo_beta": 0.2}), store, runs, VersionStore(db), run,
                       "alice", tmp_path / run, "cpu")
        if steps:
            lines = [json.loads(x) for x in (tmp_path / run / FILE).read_text().splitlines()]
            assert spec.preference_file == str(tmp_path / run / FILE) and len(lines) == 8
            assert sum(x["heldout"] for x in lines) == 2
            assert (spec.hyper.dpo_steps, spec.hyper.dpo_beta) == (12, 0.2)
        else:
            assert spec.preference_file is None and not (tmp_path / run / FILE).exists()
