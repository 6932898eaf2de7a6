"""The demo base's generated corpus and its held-out general probe (plain Python, no torch)."""

from __future__ import annotations

import json

from memwarden.training import demo_corpus


def _key(doc) -> str:
    return doc if isinstance(doc, str) else json.dumps(doc)


def test_the_corpus_is_a_function_of_its_seed():
    assert demo_corpus.documents(3, 200) == demo_corpus.documents(3, 200)
    assert demo_corpus.documents(3, 200) != demo_corpus.documents(4, 200)


def test_the_corpus_mixes_sentences_and_exchanges_of_every_kind():
    docs = demo_corpus.documents(0, 2000)
    sentences = [d for d in docs if isinstance(d, str)]
    exchanges = [d for d in docs if not isinstance(d, str)]
    assert 0.1 < len(sentences) / len(docs) < 0.6
    assert all([m["role"] for m in d] == ["user", "assistant"] for d in exchanges)
    assert len({_key(d) for d in docs}) > 0.6 * len(docs), "mostly distinct documents"
    users = [d[0]["content"] for d in exchanges]
    for opening in ("What do you remember about my", "What day comes", "Continue:", "What is my favourite"):
        assert any(u.startswith(opening) for u in users), opening


def test_personal_facts_are_drawn_at_random_not_fixed_per_person():
    # the model learns the form of a fact; which city a name goes with is left for an adapter to learn
    cities: dict[str, list[str]] = {}
    for d in demo_corpus.documents(0, 5000):
        if isinstance(d, list) and d[0]["content"].startswith("What do you remember about my"):
            words = d[1]["content"].rstrip(".").split()
            cities.setdefault(words[2], []).append(words[words.index("in") + 1])
    often = [c for c in cities.values() if len(c) >= 4]
    assert len(often) > 20 and all(len(set(c)) >= 2 for c in often)


def test_the_probe_is_held_out_and_general():
    docs = demo_corpus.documents(0, 20_000)
    probe = demo_corpus.probe(0, 200, docs)
    assert probe == demo_corpus.probe(0, 200, docs)
    assert len(probe) == 200 and all([m["role"] for m in p] == ["user", "assistant"] for p in probe)
    corpus = {_key(d) for d in docs}
    assert not [p for p in probe if _key(p) in corpus], "no probe exchange occurs in the corpus"
    assert len({_key(p) for p in probe}) == 200
    personal = ("remember about my", "Where does my", "Who is", "do for fun")
    assert not any(any(w in p[0]["content"] for w in personal) for p in probe)


def test_the_general_rehearsal_is_general_text_disjoint_from_the_probe():
    docs = demo_corpus.documents(0, 20_000)
    probe = demo_corpus.probe(0, 200, docs)
    rehearsal = demo_corpus.rehearsal(0, 400, probe)
    assert rehearsal == demo_corpus.rehearsal(0, 400, probe) and len({_key(r) for r in rehearsal}) == 400
    assert not {_key(r) for r in rehearsal} & {_key(p) for p in probe}
    personal = ("remember about my", "Where does my", "Who is", "do for fun")
    assert not any(any(w in r[0]["content"] for w in personal) for r in rehearsal)


def test_the_tokenizer_sees_every_document_and_the_topics():
    docs = demo_corpus.documents(0, 10)
    text = demo_corpus.tokenizer_text(docs)
    assert len(text) == 10 + len(demo_corpus.TOPICS)
    assert all(isinstance(t, str) and t for t in text)
