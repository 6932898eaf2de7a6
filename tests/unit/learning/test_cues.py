"""Cues: the precedence of cue, title and derived cues; wordings and the held-out one; supersession."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memwarden.learning.cues import (
    WORDINGS,
    answer,
    cue_of,
    exchange,
    opening,
    question_subject,
    supersede,
    supersession_key,
    wordings,
)

DAY = datetime(2026, 3, 14, 9, 30, tzinfo=UTC).timestamp()


def mem(i=1, kind="journal", content="Walked to the harbour, bought bread, called Mira.", **fields):
    return {"id": i, "profile": "alice", "kind": kind, "content": content, "response": None, "created_at": DAY,
            **fields}


# ---- the cue, by precedence -------------------------------------------------------------------------------

def test_cue_then_title_then_derived():
    both = mem(cue="the  harbour walk", title="Saturday", tags=["bread"])
    assert (cue_of(both).text, cue_of(both).source) == ("the harbour walk", "cue")
    titled = mem(title="Saturday errands", tags=["bread"])
    assert (cue_of(titled).text, cue_of(titled).source) == ("Saturday errands", "title")
    tagged = mem(tags=["harbour", "bread", "Mira"])
    assert (cue_of(tagged).text, cue_of(tagged).source) == ("harbour, bread and Mira", "tags")
    assert cue_of(mem(tags='["harbour"]')).text == "harbour"  # as the store keeps them: a JSON list
    plain = cue_of(mem())
    assert (plain.text, plain.source, plain.kind, plain.date) == ("Walked to the harbour", "opening", "journal",
                                                                  "2026-03-14")
    assert cue_of(mem(kind="inner_dialogue")).kind == "inner dialogue"
    assert cue_of(mem(cue="x")).explicit and not cue_of(mem(tags=["x"])).explicit


def test_an_exchange_is_named_by_what_its_question_asks_about():
    zeno = mem(kind="conversation", content="What do you remember about my godson Zeno?",
               response="Your godson Zeno lives in Tbilisi and grows beans.")
    assert (cue_of(zeno).text, cue_of(zeno).source) == ("my godson Zeno", "question")
    assert exchange(zeno) == (zeno["content"], zeno["response"]) and answer(zeno) == zeno["response"]
    other = mem(kind="conversation", content="What do I drink in the morning? Asking again.", response="Coffee.")
    assert (cue_of(other).text, cue_of(other).source) == ("What do I drink in the morning?", "opening")
    assert question_subject("Who is Mira?") == "Mira"
    assert question_subject("Tell me about the concert.") == "the concert"
    assert question_subject("What is my cat called?") is None


def test_the_opening_of_a_memory_is_its_first_words():
    assert opening("The 8:12 train is always late on Mondays.") == "The 8:12 train is always late"
    assert opening("Rain. Then sun.") == "Rain"
    assert opening('He said "no" — twice', 8) == "He said 'no'"


def test_a_preference_is_an_exchange_of_its_prompt_and_chosen_reply():
    pref = mem(kind="preference", content="Tea or coffee?", prompt="Tea or coffee?", chosen="Tea.",
               rejected="Coffee.")
    assert exchange(pref) == ("Tea or coffee?", "Tea.") and answer(pref) == "Tea."
    assert answer(mem()) == mem()["content"]


# ---- wordings ----------------------------------------------------------------------------------------------

def test_wordings_are_built_from_the_cue_and_one_is_held_out():
    w = wordings(mem(cue="the harbour walk"))
    assert len(w.trained) == WORDINGS - 1 and w.heldout is not None
    assert all("the harbour walk" in t for t in (*w.trained, w.heldout))
    assert w.heldout not in w.trained
    derived = wordings(mem())
    assert all('"Walked to the harbour' in t and "journal" in t for t in (*derived.trained, derived.heldout))


def test_an_exchange_trains_its_own_turn_first_and_never_holds_it_out():
    zeno = mem(kind="conversation", content="What do you know about my godson Zeno?", response="Tbilisi.")
    for seed in range(20):
        w = wordings(zeno, seed)
        assert w.trained[0] == zeno["content"] and len(w.trained) == WORDINGS
        assert w.heldout is not None and w.heldout.casefold() != zeno["content"].casefold()


def test_the_held_out_wording_is_deterministic_by_seed_and_memory():
    m = mem(cue="the harbour walk")
    assert wordings(m, 7) == wordings(dict(m), 7)
    assert len({wordings(m, seed).heldout for seed in range(30)}) > 1  # the seed chooses
    assert len({wordings(mem(i, cue="the harbour walk"), 7).heldout for i in range(30)}) > 1  # per memory


# ---- supersession ----------------------------------------------------------------------------------------

def test_the_key_is_the_normalised_cue_else_title_else_none():
    assert supersession_key(mem(cue="My  Godson Zeno ")) == "my godson zeno"
    assert supersession_key(mem(title="Zeno")) == "zeno"
    assert supersession_key(mem(cue="A", title="B")) == "a"
    assert supersession_key(mem(tags=["zeno"])) is None and supersession_key(mem()) is None


def test_the_newest_memory_of_a_cue_supersedes_the_others_within_its_profile():
    old = {**mem(1, cue="Zeno"), "created_at": 10.0}
    new = {**mem(2, cue="zeno"), "created_at": 20.0}
    same_time = {**mem(3, cue="ZENO"), "created_at": 20.0}  # a tie goes to the later id
    bob = {**mem(4, cue="zeno"), "profile": "bob", "created_at": 1.0}
    plain = [{**mem(5), "created_at": 30.0}, {**mem(6), "created_at": 40.0}]  # no cue: never superseded
    current, superseded = supersede([old, new, same_time, bob, *plain])
    assert [m["id"] for m in current] == [3, 4, 5, 6]
    assert superseded == {1: 3, 2: 3}


@pytest.mark.parametrize("marked_by", [2, 9])
def test_a_memory_the_store_marked_stays_superseded(marked_by):
    marked = {**mem(1, cue="zeno"), "superseded_by": marked_by}
    current, superseded = supersede([marked, mem(2)])
    assert [m["id"] for m in current] == [2] and superseded == {1: marked_by}
