"""The curator: one adapter's memories → chat-form training pairs, a holdout, a replay share and a probe set.

Pure: memories in (dicts as the store returns them: id, profile, kind, content, response, importance,
created_at, adapter), a Curated out; no I/O but write_jsonl().

- Every memory becomes a pair {"messages": [{"role": "user", …}, {"role": "assistant", …}]}. A memory with
  a response is a real exchange (content → response). One without gets a synthetic user prompt for its kind
  (inner_dialogue, reflection, dream, journal, observation, conversation, and a generic one naming any other
  kind), and its content is the assistant's turn: no kind is dropped for lack of a response.
- Dual mode adds, for each memory with a response, the flipped pair (response → content). A memory without
  one gets no flipped pair: the assistant would learn to say the synthetic prompt.
- Duplicates (same content and response after Unicode/case/whitespace normalisation) are dropped: among new
  memories the most important (then newest) is kept, and a new memory that repeats one learned before is
  dropped too (`duplicate_ids`; already learned, so fit to be marked consolidated).
- `max_samples` caps the training set (new pairs + replay): new memories are kept by importance, then
  recency, then id, until their pairs fill max_samples × (1 − replay_fraction); the rest (`capped_ids`) wait
  for the next run. The holdout pairs are set aside from those kept.
- The holdout is a seeded shuffle of the kept memories, round(holdout_fraction × n) of them (at least one
  when there are two; never all): a memory's pairs, flipped one included, stay on one side of the split. A
  lone memory with a flipped pair holds out the flipped pair.
- Replay: pairs from memories this adapter learned before, so that they make up replay_fraction of the
  training set, sampled by seed; never the probe memories.
- Probe: up to `probe_size` earlier memories chosen by a seeded hash of their id — the same ones from run to
  run as the adapter grows — to measure forgetting (loss before and after) and never trained on by replay.

Every memory must come from one profile and feed one adapter: anything else is a ValueError (profiles never
mix, see store.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Memory = Mapping[str, Any]

PROMPTS: dict[str, tuple[str, ...]] = {
    "conversation": ("What do you remember from a recent conversation?",
                     "Tell me about something that was said to you recently.",
                     "What was one of your recent conversations about?"),
    "inner_dialogue": ("What are you thinking about?",
                       "What is going through your mind right now?",
                       "Talk me through what you are thinking."),
    "reflection": ("What have you been reflecting on lately?",
                   "Looking back, what stands out to you?",
                   "What did you learn from a recent experience?"),
    "dream": ("Tell me about a dream you had.",
              "What did you dream about?",
              "Describe a dream you remember."),
    "journal": ("Write a journal entry about your day.",
                "What would you write in your journal today?",
                "How did your day go?"),
    "observation": ("What have you noticed recently?",
                    "What did you observe?",
                    "Describe something you noticed."),
}
GENERIC_PROMPTS = ("Tell me about a {kind} memory of yours.",
                   "Share something from your {kind} memories.",
                   "What do you remember? ({kind})")
PROBE_SIZE = 64


@dataclass(frozen=True)
class Pair:
    memory_id: int | None
    kind: str
    user: str
    assistant: str
    synthetic: bool = False  # the user turn is a synthetic prompt for the kind
    flipped: bool = False  # the dual-mode pair: user and assistant swapped

    def to_json(self) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": self.user},
                             {"role": "assistant", "content": self.assistant}]}


@dataclass(frozen=True)
class Curated:
    adapter: str | None
    profile: str | None
    train: list[Pair]
    holdout: list[Pair]
    probe: list[Pair]
    train_ids: list[int]  # new memories trained on
    holdout_ids: list[int]  # new memories only evaluated on
    replay_ids: list[int]  # earlier memories replayed
    probe_ids: list[int]  # earlier memories measuring forgetting
    duplicate_ids: list[int]  # new memories dropped as repeats (of a new one or of one learned before)
    capped_ids: list[int]  # new memories left for a later run by max_samples
    by_kind: dict[str, dict[str, int]]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def consolidate_ids(self) -> list[int]:
        """What a promoted run has learned: the trained memories and the repeats of learned content."""
        return sorted({*self.train_ids, *self.duplicate_ids})

    def summary(self) -> dict[str, Any]:
        """Everything but the pairs: for logs, the run record and the RPC."""
        return {"adapter": self.adapter, "profile": self.profile, "stats": self.stats, "by_kind": self.by_kind,
                "train_ids": len(self.train_ids), "holdout_ids": len(self.holdout_ids),
                "replay_ids": len(self.replay_ids), "probe_ids": len(self.probe_ids),
                "duplicate_ids": len(self.duplicate_ids), "capped_ids": len(self.capped_ids)}


# ---- pieces ----------------------------------------------------------------------------------------------

_SPACE = re.compile(r"\s+")


def normalize(text: str | None) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text or "")).strip().casefold()


def content_key(m: Memory) -> str:
    """The dedup key: a hash of the normalised content and response."""
    return hashlib.sha256(f"{normalize(m['content'])}\x00{normalize(m.get('response'))}".encode()).hexdigest()


def synthetic_prompt(kind: str, content: str) -> str:
    """A user prompt for a memory without a response, one of a few per kind, chosen by the content's hash."""
    variants = PROMPTS.get(kind)
    if variants is None:
        variants = tuple(p.format(kind=kind.replace("_", " ").strip()) for p in GENERIC_PROMPTS)
    digest = hashlib.sha256(content.encode()).digest()
    return variants[int.from_bytes(digest[:4], "big") % len(variants)]


def pairs_of(m: Memory, dual: bool) -> list[Pair]:
    """A memory's pairs: its own, then (dual mode, with a response) the flipped one."""
    mid, kind, content, response = m.get("id"), m["kind"], m["content"], m.get("response")
    if response:
        out = [Pair(mid, kind, content, response)]
        if dual:
            out.append(Pair(mid, kind, response, content, flipped=True))
        return out
    return [Pair(mid, kind, synthetic_prompt(kind, content), content, synthetic=True)]


def priority(m: Memory) -> tuple:
    """Sort key, most wanted first: importance, then recency, then the later id."""
    return (-m["importance"], -(m.get("created_at") or 0.0), -(m.get("id") or 0))


def _check_one_owner(memories: Iterable[Memory]) -> tuple[str | None, str | None]:
    profiles = {m["profile"] for m in memories if m.get("profile") is not None}
    adapters = {m["adapter"] for m in memories if m.get("adapter") is not None}
    if len(profiles) > 1:
        raise ValueError(f"curator: memories of profiles {', '.join(sorted(profiles))} would mix in one dataset")
    if len(adapters) > 1:
        raise ValueError(f"curator: memories of adapters {', '.join(sorted(adapters))} would mix in one dataset")
    return next(iter(profiles), None), next(iter(adapters), None)


def ids(memories: Iterable[Memory]) -> list[int]:
    return sorted(m["id"] for m in memories if m.get("id") is not None)


def _probe_rank(seed: int, m: Memory) -> str:
    return hashlib.sha256(f"{seed}:{m['id']}".encode()).hexdigest()


# ---- the curator -----------------------------------------------------------------------------------------

def curate(new: Sequence[Memory], previous: Sequence[Memory] = (), *, dual: bool = False, max_samples: int = 2000,
           holdout_fraction: float = 0.1, replay_fraction: float = 0.1, seed: int = 42,
           probe_size: int = PROBE_SIZE) -> Curated:
    """`new`: the adapter's unconsolidated memories; `previous`: those it learned before (replay, probe)."""
    if not 0 <= holdout_fraction < 1 or not 0 <= replay_fraction < 1 or max_samples < 1:
        raise ValueError("curator: holdout_fraction and replay_fraction must be in [0, 1), max_samples ≥ 1")
    profile, adapter = _check_one_owner([*new, *previous])

    # Dedup: earlier memories first (their content is learned), then new ones by priority.
    learned_keys = {content_key(m) for m in previous}
    seen: set[str] = set()
    unique: list[Memory] = []
    duplicates: list[Memory] = []
    for m in sorted(new, key=priority):
        key = content_key(m)
        if key in learned_keys or key in seen:
            duplicates.append(m)
        else:
            seen.add(key)
            unique.append(m)

    # Cap the new pairs to leave room for the replay share within max_samples.
    budget = max(1, math.floor(max_samples * (1 - replay_fraction)))
    kept: list[tuple[Memory, list[Pair]]] = []
    capped: list[Memory] = []
    used = 0
    for m in unique:
        ps = pairs_of(m, dual)
        if capped or used + len(ps) > budget:
            capped.append(m)
            continue
        kept.append((m, ps))
        used += len(ps)

    # Holdout: whole memories, by a seeded shuffle of their ids.
    holdout: list[Pair] = []
    train_new: list[Pair] = []
    held: set[int] = set()
    if len(kept) >= 2:
        n_hold = min(len(kept) - 1, max(1, round(holdout_fraction * len(kept)))) if holdout_fraction > 0 else 0
        order = list(range(len(kept)))
        random.Random(f"{seed}:holdout:{len(kept)}").shuffle(order)
        held = set(order[:n_hold])
    for i, (_, ps) in enumerate(kept):
        (holdout if i in held else train_new).extend(ps)
    if len(kept) == 1 and len(kept[0][1]) == 2 and holdout_fraction > 0:
        train_new, holdout = [kept[0][1][0]], [kept[0][1][1]]  # a lone memory: hold out its flipped pair
    holdout_memories = [kept[i][0] for i in sorted(held)]
    train_memories = [m for i, (m, _) in enumerate(kept) if i not in held]

    # Probe: a stable, seeded choice of earlier memories (at most half of them), never replayed.
    prev_unique: list[Memory] = []
    prev_seen: set[str] = set()
    for m in sorted(previous, key=lambda m: m["id"]):
        key = content_key(m)
        if key not in prev_seen:
            prev_seen.add(key)
            prev_unique.append(m)
    n_probe = min(probe_size, math.ceil(len(prev_unique) / 2))
    probe_memories = sorted(sorted(prev_unique, key=lambda m: _probe_rank(seed, m))[:n_probe], key=lambda m: m["id"])
    probe_set = {m["id"] for m in probe_memories}
    probe = [pairs_of(m, dual=False)[0] for m in probe_memories]

    # Replay: earlier memories until they are replay_fraction of the training set (within max_samples).
    target = 0
    if replay_fraction > 0 and train_new:
        target = round(replay_fraction / (1 - replay_fraction) * len(train_new))
        target = max(0, min(target, max_samples - len(train_new)))
    candidates = [m for m in prev_unique if m["id"] not in probe_set]
    random.Random(f"{seed}:replay").shuffle(candidates)
    replay: list[Pair] = []
    replay_memories: list[Memory] = []
    for m in candidates:
        if len(replay) >= target:
            break
        ps = pairs_of(m, dual)[: target - len(replay)]
        replay.extend(ps)
        replay_memories.append(m)

    train = train_new + replay
    random.Random(f"{seed}:train").shuffle(train)

    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        ("memories", "duplicates", "capped", "train", "holdout", "pairs", "synthetic"), 0))
    for m in new:
        by_kind[m["kind"]]["memories"] += 1
    for name, group in (("duplicates", duplicates), ("capped", capped), ("train", train_memories),
                        ("holdout", holdout_memories)):
        for m in group:
            by_kind[m["kind"]][name] += 1
    for p in train_new + holdout:
        by_kind[p.kind]["pairs"] += 1
        by_kind[p.kind]["synthetic"] += p.synthetic
    stats = {
        "new": len(new), "unique": len(unique), "duplicates": len(duplicates), "capped": len(capped),
        "previous": len(previous), "train_pairs": len(train), "new_train_pairs": len(train_new),
        "holdout_pairs": len(holdout), "replay_pairs": len(replay), "probe_pairs": len(probe),
        "flipped_pairs": sum(p.flipped for p in train_new + holdout),
        "synthetic_pairs": sum(p.synthetic for p in train_new + holdout),
        "kinds": dict(Counter(m["kind"] for m in new)),
        "dual": dual, "max_samples": max_samples, "holdout_fraction": holdout_fraction,
        "replay_fraction": replay_fraction, "seed": seed,
    }
    return Curated(
        adapter=adapter, profile=profile, train=train, holdout=holdout, probe=probe,
        train_ids=ids(train_memories), holdout_ids=ids(holdout_memories), replay_ids=ids(replay_memories),
        probe_ids=ids(probe_memories), duplicate_ids=ids(duplicates), capped_ids=ids(capped),
        by_kind={k: dict(v) for k, v in sorted(by_kind.items())}, stats=stats)


def write_jsonl(path: Path | str, pairs: Iterable[Pair | Mapping[str, Any]]) -> int:
    """Write pairs as JSONL ({"messages": [...]} per line) atomically: a temp file in the same directory,
    fsynced, then renamed over `path`. Returns the number of lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for p in pairs:
                obj = p.to_json() if isinstance(p, Pair) else {"messages": list(p["messages"])}
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
