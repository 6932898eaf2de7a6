"""The curator: every kind becomes pairs, dual mode, dedup, the cap, holdout, replay and probe sets."""

from __future__ import annotations

import json
import os

import pytest

from memwarden.learning import cues
from memwarden.learning.curator import Pair, content_key, curate, heldout_pair, pairs_of, with_general, write_jsonl

KINDS = ("conversation", "inner_dialogue", "reflection", "dream", "journal", "observation")


def mem(i, kind="journal", content=None, response=None, importance=5, created_at=None, profile="alice",
        adapter="alice", consolidated=None, **fields):
    return {"id": i, "profile": profile, "kind": kind, "content": content or f"memory number {i}",
            "response": response, "importance": importance, "created_at": float(i if created_at is None else
                                                                                   created_at),
            "adapter": adapter, "consolidated_run": consolidated, **fields}


def all_pairs(c):
    """The memories' own pairs, trained or held out (not the held-out wordings of trained memories)."""
    return c.train + [p for p in c.holdout if not p.heldout]


# ---- pairs -----------------------------------------------------------------------------------------------

def test_every_kind_becomes_pairs():
    memories = [mem(1, "conversation", "how are you?", "fine, thanks")] + [
        mem(i, kind) for i, kind in enumerate((*KINDS[1:], "gratitude", "conversation"), start=2)]
    c = curate(memories, holdout_fraction=0.01, replay_fraction=0)
    assert {p.memory_id for p in all_pairs(c)} == {m["id"] for m in memories}
    trained = cues.WORDINGS - 1
    assert {k: v["pairs"] for k, v in c.by_kind.items()} == {
        "conversation": 2 * trained + 1, "inner_dialogue": trained, "reflection": trained, "dream": trained,
        "journal": trained, "observation": trained, "gratitude": trained}
    own = [p for p in all_pairs(c) if p.memory_id == 1 and not p.synthetic]
    assert [p.to_json() for p in own] == [{"messages": [{"role": "user", "content": "how are you?"},
                                                        {"role": "assistant", "content": "fine, thanks"}]}]
    for p in all_pairs(c):
        if p.memory_id != 1:
            assert p.synthetic and p.assistant == f"memory number {p.memory_id}"
    assert all("gratitude" in p.user for p in all_pairs(c) if p.memory_id == 7)  # prompts name the kind


def test_story_4_all_2181_memories_are_used_not_79():
    memories = [mem(i, "conversation", response=f"reply {i}") for i in range(79)]
    memories += [mem(i, KINDS[1 + i % 5]) for i in range(79, 2181)]
    c = curate(memories, max_samples=10_000, replay_fraction=0)
    assert len(c.train_ids) + len(c.holdout_ids) == 2181
    assert c.stats["synthetic_pairs"] == 2181 * (cues.WORDINGS - 1)
    assert c.capped_ids == [] and c.duplicate_ids == []


def test_forty_journal_entries_are_asked_for_in_forty_different_ways():
    entries = [mem(i, "journal", f"Day {i}: the {i}th walk to the harbour, and bread.") for i in range(40)]
    c = curate(entries, holdout_fraction=0.1, replay_fraction=0)
    prompts = {}
    for p in all_pairs(c) + c.heldout_wordings:
        prompts.setdefault(p.user, set()).add(p.memory_id)
    assert all(len(owners) == 1 for owners in prompts.values())  # no prompt is shared by two memories
    assert len(prompts) == 40 * cues.WORDINGS - len(c.holdout_ids)  # holdout memories have no held-out wording


def test_recall_pairs_a_trained_wording_with_one_never_trained():
    memories = [mem(i, "conversation", f"Who is friend {i}?", f"Friend {i} lives in town {i}.") for i in range(20)]
    memories += [mem(i, "journal", cue=f"the trip number {i}") for i in range(20, 30)]
    c = curate(memories, dual=True, holdout_fraction=0.1, replay_fraction=0, seed=5)
    trained_users = {(p.memory_id, p.user) for p in c.train}
    by_memory = {}
    for p in c.recall:
        by_memory.setdefault(p.memory_id, []).append(p)
    assert sorted(by_memory) == c.train_ids
    for mid, (seen, unseen) in by_memory.items():
        assert not seen.heldout and (mid, seen.user) in trained_users
        assert unseen.heldout and (mid, unseen.user) not in trained_users
        assert seen.assistant == unseen.assistant
    exchange = next(p for p in c.recall if p.memory_id == 0 and not p.heldout)
    assert exchange.user == "Who is friend 0?"  # an exchange's own turn is its trained recall wording
    assert curate(memories, dual=True, holdout_fraction=0.1, replay_fraction=0, seed=5).recall == c.recall


def test_dual_mode_flips_real_exchanges_only():
    ps = pairs_of(mem(1, "conversation", "question", "answer"), dual=True)
    first, last = ps[0], ps[-1]
    assert (first.user, first.assistant, first.flipped) == ("question", "answer", False)
    assert (last.user, last.assistant, last.flipped) == ("answer", "question", True)
    assert sum(p.flipped for p in ps) == 1 and len(ps) == cues.WORDINGS + 1
    assert not any(p.flipped for p in pairs_of(mem(2, "dream"), dual=True))
    c = curate([mem(i, "conversation", response=f"r{i}") for i in range(10)] + [mem(10, "dream")], dual=True,
               replay_fraction=0)
    assert len(all_pairs(c)) == 10 * (cues.WORDINGS + 1) + cues.WORDINGS - 1 and c.stats["flipped_pairs"] == 10


def test_a_preference_is_trained_on_its_chosen_reply():
    pref = mem(1, "preference", content="tea or coffee?", prompt="Tea or coffee?", chosen="Tea, green.",
               rejected="Coffee.")
    ps = pairs_of(pref, dual=False)
    assert (ps[0].user, ps[0].assistant, ps[0].synthetic) == ("Tea or coffee?", "Tea, green.", False)
    assert all(p.assistant == "Tea, green." for p in ps) and heldout_pair(pref).assistant == "Tea, green."
    other = {**pref, "id": 2, "chosen": "Coffee.", "rejected": "Tea, green."}
    assert content_key(pref) != content_key(other)  # the same prompt preferring the other way is no repeat


# ---- supersession ----------------------------------------------------------------------------------------

def test_a_newer_memory_with_the_same_cue_is_trained_and_the_older_is_not():
    old = mem(1, "journal", "Zeno lives in Tbilisi.", cue="my godson Zeno", created_at=10)
    new = mem(2, "journal", "Zeno moved to Batumi.", cue="My godson  Zeno", created_at=20)
    c = curate([new, old, mem(3), mem(4)], replay_fraction=0, holdout_fraction=0.01)
    assert c.superseded_ids == [1] and 1 not in {p.memory_id for p in all_pairs(c) + c.recall}
    assert 1 not in c.consolidate_ids and c.stats["superseded"] == 1 and c.by_kind["journal"]["superseded"] == 1
    assert {p.assistant for p in all_pairs(c) if p.memory_id == 2} == {"Zeno moved to Batumi."}


def test_a_learned_memory_that_an_update_supersedes_is_neither_replayed_nor_probed():
    previous = [mem(100 + i, consolidated="r", cue=f"fact {i}") for i in range(40)]
    update = mem(1, cue="Fact 7", content="fact 7, corrected", created_at=1000)
    c = curate([update], previous, replay_fraction=0.5, probe_size=64)
    assert 107 not in c.replay_ids + c.probe_ids
    assert c.superseded_ids == [] and c.train_ids == [1]
    marked = {**previous[3], "superseded_by": 55}  # marked by the store: gone even without its successor here
    assert 103 not in curate([mem(2)], [marked, *previous[4:]], replay_fraction=0.5).probe_ids


def test_a_late_memory_older_than_the_learned_one_is_superseded_by_it():
    learned = mem(100, consolidated="r", cue="the car", content="a blue car", created_at=500)
    late = mem(1, cue="the car", content="a red car", created_at=100)
    c = curate([late, mem(2)], [learned], replay_fraction=0)
    assert c.superseded_ids == [1] and c.train_ids == [2]


# ---- dedup and the cap -----------------------------------------------------------------------------------

def test_duplicates_are_dropped_keeping_the_most_important():
    memories = [mem(1, content="The  River\n", importance=3), mem(2, content="the river", importance=8),
                mem(3, content="THE RIVER ", importance=8, created_at=0), mem(4, content="the sea")]
    c = curate(memories, replay_fraction=0)
    kept = {p.memory_id for p in all_pairs(c)}
    assert kept == {2, 4}
    assert c.duplicate_ids == [1, 3]
    assert content_key(memories[0]) == content_key(memories[1])
    assert content_key(mem(5, content="x", response="a")) != content_key(mem(6, content="x", response="b"))


def test_a_repeat_of_a_learned_memory_is_a_duplicate_and_consolidated():
    previous = [mem(1, content="old news", consolidated="run-1")]
    c = curate([mem(2, content="Old  news"), mem(3), mem(4)], previous, replay_fraction=0)
    assert c.duplicate_ids == [2]
    assert 2 in c.consolidate_ids and 2 not in c.train_ids + c.holdout_ids


def test_max_samples_keeps_the_most_important_then_newest():
    memories = [mem(i, importance=1 + i % 10, created_at=i) for i in range(100)]
    c = curate(memories, max_samples=20 * (cues.WORDINGS - 1), replay_fraction=0, holdout_fraction=0.1)
    kept = sorted(c.train_ids + c.holdout_ids)
    expected = sorted(m["id"] for m in sorted(memories, key=lambda m: (-m["importance"], -m["created_at"]))[:20])
    assert kept == expected
    assert len(c.capped_ids) == 80 and not set(c.capped_ids) & set(kept)
    assert curate(list(reversed(memories)), max_samples=20 * (cues.WORDINGS - 1),
                  replay_fraction=0, holdout_fraction=0.1).train_ids == c.train_ids


def test_max_samples_leaves_room_for_replay():
    previous = [mem(1000 + i, consolidated="r") for i in range(200)]
    c = curate([mem(i) for i in range(100)], previous, max_samples=50, replay_fraction=0.2, probe_size=8)
    assert len(c.train) <= 50
    assert len(c.train_ids) + len(c.holdout_ids) == 40 // (cues.WORDINGS - 1)  # 50 × (1 − 0.2) pairs


# ---- holdout ---------------------------------------------------------------------------------------------

def test_holdout_fraction_whole_memories_deterministic_by_seed():
    memories = [mem(i, "conversation", response=f"r{i}") for i in range(50)]
    c = curate(memories, dual=True, holdout_fraction=0.1, replay_fraction=0, seed=7)
    assert len(c.holdout_ids) == 5 and len(c.train_ids) == 45
    assert {p.memory_id for p in c.holdout} == set(c.holdout_ids)
    assert not {p.memory_id for p in c.train} & set(c.holdout_ids)  # a flipped pair never leaks
    again = curate(memories, dual=True, holdout_fraction=0.1, replay_fraction=0, seed=7)
    assert again.holdout_ids == c.holdout_ids and again.train == c.train
    others = {tuple(curate(memories, holdout_fraction=0.1, replay_fraction=0, seed=s).holdout_ids)
              for s in range(5)}
    assert len(others) > 1


@pytest.mark.parametrize(("n", "holdout"), [(1, 0), (2, 1), (3, 1), (30, 3)])
def test_at_least_one_holdout_and_never_all(n, holdout):
    c = curate([mem(i) for i in range(n)], holdout_fraction=0.01 if n < 30 else 0.1, replay_fraction=0)
    assert len(c.holdout_ids) == holdout and len(c.train_ids) == n - holdout
    assert len(c.holdout) == holdout * (cues.WORDINGS - 1)


def test_by_default_every_memory_is_trained_and_the_holdout_is_their_held_out_wordings():
    memories = [mem(i, "conversation", response=f"r{i}") for i in range(40)] + [mem(40, "journal")]
    c = curate(memories, dual=True, replay_fraction=0)
    assert c.train_ids == list(range(41)) and c.holdout_ids == []
    assert sorted(c.holdout, key=lambda p: p.memory_id) == [heldout_pair(m) for m in memories]
    trained = {(p.memory_id, p.user) for p in c.train}
    assert not {(p.memory_id, p.user) for p in c.holdout} & trained  # a held-out wording is never trained
    own = [p for m in memories for p in pairs_of(m, True)]
    assert c.stats["holdout_pairs"] == 41 and len(c.train) == len(own)
    assert c.by_kind["conversation"]["pairs"] == len(own) - len(pairs_of(memories[-1], True))  # wordings not counted
    assert c.stats["synthetic_pairs"] == sum(p.synthetic for p in own)


def test_a_lone_exchange_in_dual_mode_holds_out_its_flipped_pair():
    c = curate([mem(1, "conversation", "q", "a")], dual=True, replay_fraction=0, holdout_fraction=0.1)
    assert not any(p.flipped for p in c.train) and [p.flipped for p in c.holdout] == [True]
    assert c.train_ids == [1] and c.holdout_ids == []


# ---- replay and probe ------------------------------------------------------------------------------------

def test_no_replay_and_no_probe_on_the_first_run():
    c = curate([mem(i) for i in range(20)])
    assert c.replay_ids == [] and c.probe == [] and c.stats["replay_pairs"] == 0


def test_replay_takes_one_wording_of_as_many_earlier_memories_as_its_share_holds_the_probe_among_them():
    previous = [mem(1000 + i, consolidated="run-1") for i in range(300)]
    new = [mem(i) for i in range(100)]
    c = curate(new, previous, replay_fraction=0.1, replay_all=False, holdout_fraction=0.1, probe_size=32)
    new_train = len(c.train) - c.stats["replay_pairs"]
    assert new_train == 90 * (cues.WORDINGS - 1)
    assert c.stats["replay_pairs"] == 10 * (cues.WORDINGS - 1)  # 10 % of the training pairs
    assert len(c.replay_ids) == c.stats["replay_pairs"]  # a pair each: as many earlier memories as can be
    assert set(c.replay_ids) <= {m["id"] for m in previous}
    assert len(c.probe_ids) == 32 and {p.memory_id for p in c.probe} == set(c.probe_ids)
    assert not set(c.consolidate_ids) & {m["id"] for m in previous}
    everyone = curate(new, previous[:20], replay_fraction=0.1, replay_all=False, holdout_fraction=0.1, probe_size=8)
    assert sorted(everyone.replay_ids) == [m["id"] for m in previous[:20]]  # the probe's memories replayed too
    assert set(everyone.probe_ids) < set(everyone.replay_ids)


def test_replay_reaches_every_earlier_memory_once_when_the_training_set_holds_them():
    previous = [mem(1000 + i, consolidated="run-1") for i in range(300)]
    c = curate([mem(i) for i in range(40)], previous, replay_fraction=0.5, holdout_fraction=0.1)
    assert sorted(c.replay_ids) == [m["id"] for m in previous]  # far more than the share's 72 pairs
    replayed = [p for p in c.train if p.memory_id in c.replay_ids]
    assert len(replayed) == 300 and len({p.memory_id for p in replayed}) == 300  # one wording each
    assert all(p == pairs_of(previous[p.memory_id - 1000], False)[0] for p in replayed)


def test_the_share_is_a_floor_filled_with_more_wordings_of_few_earlier_memories():
    previous = [mem(1000 + i, consolidated="run-1") for i in range(10)]
    c = curate([mem(i) for i in range(40)], previous, replay_fraction=0.2, holdout_fraction=0.1)
    new_pairs = 36 * (cues.WORDINGS - 1)
    assert c.stats["replay_pairs"] == round(new_pairs / 4) == 18  # a fifth of the training set, not 10 pairs
    assert sorted(c.replay_ids) == [m["id"] for m in previous]
    replayed = [(p.memory_id, p.user) for p in c.train if p.memory_id in c.replay_ids]
    assert len(set(replayed)) == 18  # no pair twice
    firsts = {(m["id"], pairs_of(m, False)[0].user) for m in previous}
    assert firsts <= set(replayed)  # every memory's first wording before any second one


def test_max_samples_bounds_replay_of_every_earlier_memory_to_what_is_left():
    previous = [mem(1000 + i, consolidated="run-1") for i in range(300)]
    c = curate([mem(i) for i in range(40)], previous, max_samples=200, replay_fraction=0.5, holdout_fraction=0.1)
    new_pairs = 36 * (cues.WORDINGS - 1)
    assert len(c.train) == 200 and c.stats["replay_pairs"] == 200 - new_pairs
    assert len(c.replay_ids) == 200 - new_pairs  # one wording each of as many as fit
    bound = curate([mem(i) for i in range(100)], previous, max_samples=100, replay_fraction=0.4)
    assert bound.stats["replay_pairs"] >= 40 and len(bound.train) <= 100  # the share when max_samples binds


def general(n):
    return [{"messages": [{"role": "user", "content": f"Continue: story {i}"},
                          {"role": "assistant", "content": f"and then {i}."}]} for i in range(n)]


def test_general_rehearsal_is_its_share_of_the_training_set_within_max_samples():
    train = [Pair(i, "journal", f"q{i}", f"a{i}") for i in range(80)]
    mixed = with_general(train, general(400), 0.2, 2000, seed=42)
    assert len(mixed) == 100 and sum(isinstance(x, dict) for x in mixed) == 20  # a fifth of the result
    assert sorted(map(id, (x for x in mixed if isinstance(x, Pair)))) == sorted(map(id, train))
    assert len(with_general(train, general(400), 0.2, 90, seed=42)) == 90  # what max_samples leaves
    assert len(with_general(train, general(5), 0.2, 2000, seed=42)) == 85  # as many as there are
    assert with_general(train, general(400), 0.0, 2000, seed=42) == train
    assert with_general(train, [], 0.2, 2000, seed=42) == train
    other = with_general(train[:-2], general(400), 0.2, 2000, seed=42)
    assert ({json.dumps(x["messages"]) for x in other if isinstance(x, dict)}
            != {json.dumps(x["messages"]) for x in mixed if isinstance(x, dict)})


def test_a_pool_drawn_every_pass_stays_within_max_samples():
    train = [Pair(i, "journal", f"q{i}", f"a{i}") for i in range(80)]
    assert len(with_general(train, general(400), 0.2, 2000, seed=42, every_pass=True)) == 480
    assert len(with_general(train, general(400), 0.2, 90, seed=42, every_pass=True)) == 90
    assert not [x for x in with_general(train, general(400), 0.2, 60, seed=42, every_pass=True) if isinstance(x, dict)]


def test_general_rehearsal_is_tagged_for_the_trainer_and_the_memories_are_not(tmp_path):
    train = [Pair(i, "journal", f"q{i}", f"a{i}") for i in range(30)]
    mixed = with_general(train, general(400), 0.25, 2000, seed=42)
    assert all(x["general"] is True for x in mixed if isinstance(x, dict))
    write_jsonl(tmp_path / "train.jsonl", mixed)
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    tagged = [r for r in rows if r.get("general")]
    assert len(tagged) == 10 and all(r["messages"][0]["content"].startswith("Continue: story") for r in tagged)
    assert all("general" not in r and r["messages"][0]["content"].startswith("q") for r in rows if r not in tagged)


def test_the_probe_set_is_stable_as_the_adapter_grows():
    previous = [mem(1000 + i, consolidated="r") for i in range(200)]
    first = curate([mem(1)], previous, probe_size=16).probe_ids
    grown = curate([mem(2)], previous + [mem(2000 + i, consolidated="r") for i in range(20)],
                   probe_size=16).probe_ids
    assert len(set(first) & set(grown)) >= 12
    assert len(curate([mem(3)], previous[:6], probe_size=16).probe_ids) == 6  # all of few earlier memories


def test_profiles_never_mix():
    with pytest.raises(ValueError, match="profiles alice, bob would mix"):
        curate([mem(1), mem(2, profile="bob", adapter="alice")])
    with pytest.raises(ValueError, match="profiles alice, bob would mix"):
        curate([mem(1)], [mem(2, profile="bob", adapter="bob", consolidated="r")])
    with pytest.raises(ValueError, match="adapters"):
        curate([mem(1), mem(2, adapter="other")])


def test_curation_is_deterministic():
    previous = [mem(1000 + i, KINDS[i % 6], consolidated="r") for i in range(80)]
    new = [mem(i, KINDS[i % 6], response="r" if i % 4 == 0 else None) for i in range(60)]
    a = curate(new, previous, dual=True, seed=3)
    b = curate(list(reversed(new)), list(reversed(previous)), dual=True, seed=3)
    assert a == b


# ---- write_jsonl -----------------------------------------------------------------------------------------

def test_write_jsonl_atomically(tmp_path):
    path = tmp_path / "data" / "train.jsonl"
    pairs = [Pair(1, "dream", "Tell me about a dream.", "Über den Wolken"),
             {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    assert write_jsonl(path, pairs) == 2
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["messages"][1]["content"] == "Über den Wolken"
    assert rows[1]["messages"][0] == {"role": "user", "content": "a"}
    assert "Über" in path.read_text(encoding="utf-8")  # not \u-escaped
    with pytest.raises(TypeError):
        write_jsonl(path, [Pair(2, "x", "u", "a"), {"messages": [{"content": object()}]}])
    assert len(path.read_text().splitlines()) == 2  # the old file is intact
    assert os.listdir(path.parent) == ["train.jsonl"]  # no temp file left behind
