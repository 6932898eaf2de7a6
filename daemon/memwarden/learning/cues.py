"""Cues: what a memory is about, the prompts that ask for it, and which memory an update replaces.

Pure: memories in (dicts as the store returns them), plain data out.

- **The cue** of a memory, by precedence: its `cue`, else its `title`, else one derived from the memory itself:
  a subject (its tags; else, for an exchange whose user turn asks about something — "What do you remember about
  my godson Zeno?" — that something; else the memory's opening words), its date and its kind.
- **Wordings.** A memory is asked for in several prompts built from its cue, WORDINGS of them picked from a
  family of templates by a seeded choice per memory; one of them is held out (never trained) to test that
  recall is not bound to one wording. An exchange's own user turn is always a trained wording too, first.
- **Supersession.** A memory with a cue (or a title) is the current version of what that cue names within its
  profile: a newer one (by created_at, then id) with the same cue, compared after Unicode, case and whitespace
  normalisation, supersedes it. A derived cue is a description, not an identity (two journal entries of one
  day may open alike), so a memory without a cue or title is never superseded. The store keeps the same rule
  in SQL (store.py, `superseded_by`); `supersede` applies it to a list.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Memory = Mapping[str, Any]

WORDINGS = 3  # cue prompts per memory: one held out, the others trained
OPENING_WORDS = 6  # words of a memory's opening that name it when nothing else does

# Explicit cues, tags and the subject of a question: "… about {s}".
ABOUT = ("What do you remember about {s}?",
         "Tell me about {s}.",
         "What do you know about {s}?",
         "Do you remember anything about {s}?",
         "Remind me about {s}.",
         "What comes to mind when you think of {s}?")
# A derived subject adds the memory's kind and date.
DERIVED_ABOUT = ("What do you remember about {s}?",
                 "Tell me about {s}.",
                 "What did your {kind} of {date} say about {s}?",
                 "Recall your {kind} about {s}.",
                 "What do you know about {s}?")
# A content-only memory named by its opening: recall completes it.
OPENING = ('What do you remember of your {kind} of {date} that begins "{o}"?',
           'Tell me about your {kind} that begins "{o}".',
           'Recall your {kind} from {date}: "{o}…"',
           'Your {kind} of {date} begins "{o}". How does it go on?',
           'Go on with your {kind} that starts "{o}".')
# An exchange named by its user turn's opening: recall gives the reply.
REPLY = ('In our {kind} of {date}, what did you answer when I said: "{o}"',
         'What did you reply when I said: "{o}"',
         'Remember our {kind} that began with: "{o}"',
         'On {date} I said: "{o}" What was your answer?')

# Ways of asking about something that leave just the something: "Who is Mira?" → "Mira".
_LEAD_IN = re.compile(
    r"^(?:what do you (?:remember|recall|know) about|what can you tell me about|tell me about|"
    r"do you (?:remember|recall)|who is|who was|who are|remind me about|remind me of)\s+(?P<subject>.+?)[\s?.!]*$",
    re.IGNORECASE)
_SPACE = re.compile(r"\s+")
_CLAUSE_END = re.compile(r"[.;:!?,](?=\s|$)|\n|—|–")  # "8:12" and "3.5" do not end a clause
USER_TURN_WORDS = 16  # words of an exchange's user turn that name it


def normalize(text: str | None) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text or "")).strip().casefold()


@dataclass(frozen=True)
class Cue:
    text: str  # what a prompt names: the cue or title as given, or the derived subject or opening
    source: str  # "cue" | "title" | "tags" | "question" | "opening"
    kind: str  # the memory's kind as words ("inner dialogue")
    date: str  # the memory's day, YYYY-MM-DD (UTC)

    @property
    def explicit(self) -> bool:
        return self.source in ("cue", "title")


@dataclass(frozen=True)
class Wordings:
    trained: tuple[str, ...]  # the first is the memory's canonical prompt (an exchange's own user turn)
    heldout: str | None  # never trained: recall on it tests that the memory is not bound to one wording


def exchange(m: Memory) -> tuple[str, str] | None:
    """A memory that is an exchange: (user turn, answer). A preference's answer is its chosen reply."""
    if m.get("prompt") and m.get("chosen"):
        return m["prompt"], m["chosen"]
    if m.get("response"):
        return m["content"], m["response"]
    return None


def answer(m: Memory) -> str:
    """What recall must give back: an exchange's answer, else the memory itself."""
    ex = exchange(m)
    return ex[1] if ex else m["content"]


def tags_of(m: Memory) -> list[str]:
    tags = m.get("tags")
    if isinstance(tags, str):  # as stored: a JSON list
        tags = json.loads(tags)
    return [str(t) for t in tags or ()]


def _date(m: Memory) -> str:
    created = m.get("created_at")
    if isinstance(created, int | float):
        return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d")
    return "an earlier day"


def _kind_words(kind: str) -> str:
    return kind.replace("_", " ").strip() or "memory"


def question_subject(text: str) -> str | None:
    """What a question asks about, when it asks in a usual way: "Who is Mira?" → "Mira"."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _LEAD_IN.match(first)
    if match is None:
        return None
    subject = match["subject"].strip()
    return subject if subject and len(subject.split()) <= 12 else None


def opening(text: str, words: int = OPENING_WORDS) -> str:
    """The first words of a text's first clause (a question keeps its mark), at most `words` of them."""
    text = text.strip()
    clause = _CLAUSE_END.split(text, maxsplit=1)[0].strip() or text
    if text[len(clause):len(clause) + 1] == "?":
        clause += "?"
    return " ".join(clause.split()[:words]).replace('"', "'")


def cue_of(m: Memory) -> Cue:
    """The memory's cue: its cue, else its title, else derived (tags, a question's subject, its opening)."""
    kind, date = _kind_words(m["kind"]), _date(m)
    for source in ("cue", "title"):
        if m.get(source):
            return Cue(" ".join(m[source].split()), source, kind, date)
    tags = tags_of(m)
    if tags:
        return Cue(tags[0] if len(tags) == 1 else f"{', '.join(tags[:-1])} and {tags[-1]}", "tags", kind, date)
    ex = exchange(m)
    user = ex[0] if ex else m["content"]
    if ex and (subject := question_subject(user)):
        return Cue(subject, "question", kind, date)
    return Cue(opening(user, USER_TURN_WORDS if ex else OPENING_WORDS), "opening", kind, date)


def _templates(cue: Cue, is_exchange: bool) -> tuple[str, ...]:
    if cue.explicit or cue.source == "question":
        return ABOUT
    if cue.source == "tags":
        return DERIVED_ABOUT
    return REPLY if is_exchange else OPENING


def _identity(m: Memory) -> str:
    return str(m["id"]) if m.get("id") is not None else normalize(m["content"])


def wordings(m: Memory, seed: int = 42, n: int = WORDINGS) -> Wordings:
    """The memory's prompts: `n` cue wordings chosen by seed (one held out) and, for an exchange, its own user
    turn first among the trained ones. The same memory and seed give the same wordings."""
    cue = cue_of(m)
    ex = exchange(m)
    family = _templates(cue, ex is not None)
    rng = random.Random(f"{seed}:wordings:{_identity(m)}")
    fields = {"s": cue.text, "o": cue.text, "kind": cue.kind, "date": cue.date}
    own = (ex[0],) if ex else ()
    # A template that words the user turn itself is no other wording.
    family = tuple(t for t in family if normalize(t.format(**fields)) not in {normalize(o) for o in own})
    chosen = [t.format(**fields) for t in rng.sample(family, min(n, len(family)))]
    trained = tuple(dict.fromkeys((*own, *chosen[1:])))
    heldout = chosen[0] if chosen and chosen[0] not in trained else None
    return Wordings(trained, heldout)


def supersession_key(m: Memory) -> str | None:
    """The identity an update replaces: the normalised cue, else title; None (never superseded) without one."""
    for source in ("cue", "title"):
        if m.get(source):
            return normalize(m[source])
    return None


def _newest_first(m: Memory) -> tuple:
    return (-(m.get("created_at") or 0.0), -(m.get("id") or 0))


def supersede(memories: Sequence[Memory]) -> tuple[list[Memory], dict[int, int]]:
    """The current memories, in their order, and {superseded id: the id of the memory that supersedes it}:
    those the store marked (`superseded_by`), and those a newer memory of the list with the same key and
    profile replaces."""
    newest: dict[tuple[str, str], Memory] = {}
    for m in sorted((m for m in memories if m.get("superseded_by") is None), key=_newest_first):
        key = supersession_key(m)
        if key is not None:
            newest.setdefault((m["profile"], key), m)
    current: list[Memory] = []
    superseded: dict[int, int] = {}
    for m in memories:
        if m.get("superseded_by") is not None:
            superseded[m["id"]] = m["superseded_by"]
            continue
        key = supersession_key(m)
        winner = newest.get((m["profile"], key)) if key is not None else None
        if winner is not None and winner is not m:
            superseded[m["id"]] = winner["id"]
        else:
            current.append(m)
    return current, superseded
