"""The curator: one adapter's memories → chat-form training pairs, a holdout, a replay share and a probe set.

Pure: memories in (dicts as the store returns them: id, profile, kind, content, response, importance,
created_at, adapter, and optionally cue, title, tags, prompt, chosen, rejected, superseded_by), a Curated out; no
I/O but write_jsonl(). with_general() mixes the base's general-text rehearsal into a training set.

- Every memory becomes pairs {"messages": [{"role": "user", …}, {"role": "assistant", …}]}, one per trained
  wording of its cue (cues.py): the user turn asks for the memory, the assistant's turn gives it back (an
  exchange's answer — a preference's chosen reply — or a content-only memory itself). An exchange's own user
  turn is its first wording, so the real exchange is always trained; no kind is dropped for lack of a response.
  Each trained memory has one more wording, held out (`heldout_wordings`): recall is measured on it too.
- `extra` (learning.augment, augment.py): question/answer pairs the served model wrote about a new memory are
  trained beside its wordings, except one that asks in its held-out wording.
- Dual mode adds, for each exchange, the flipped pair (answer → user turn). A memory without one gets no
  flipped pair: the assistant would learn to say a prompt.
- Superseded memories (cues.supersede: a newer memory of the profile has the same cue) are neither trained,
  held out, replayed nor probed (`superseded_ids` among the new ones).
- Duplicates (same content and response after Unicode/case/whitespace normalisation) are dropped: among new
  memories the most important (then newest) is kept, and a new memory that repeats one learned before is
  dropped too (`duplicate_ids`; already learned, so fit to be marked consolidated).
- `max_samples` caps the training set (new pairs + replay): new memories are kept by importance, then
  recency, then id, until their pairs fill max_samples × (1 − replay_fraction); the rest (`capped_ids`) wait
  for the next run. The holdout pairs are set aside from those kept.
- The holdout. By default (holdout_fraction 0) every kept memory is trained, and the holdout is each trained
  memory's held-out wording: its loss says whether what was learned answers a question never trained, and a
  memory the run consolidates is in the weights the run promotes. With holdout_fraction > 0 it is instead a
  seeded shuffle of the kept memories, round(holdout_fraction × n) of them (at least one when there are two;
  never all), kept out of training to measure the loss on memories never seen: a memory's pairs, flipped one
  included, stay on one side of the split, and a lone memory with a flipped pair holds out the flipped pair.
- Replay: pairs of the memories this adapter learned before, a wording of each memory per pass over them in a
  seeded order (the first trained wording first: each was learned in all its wordings once already, so one
  rehearses it), as many pairs as the larger of replay_fraction of the training set and, with `replay_all`,
  one per earlier memory — within max_samples. So every earlier memory is rehearsed while the training set
  holds them all; the share is a floor where there are few of them (their other wordings fill it) and what
  replay keeps where max_samples binds (the new memories' budget leaves it that much room).
- Probe: up to `probe_size` earlier memories chosen by a seeded hash of their id — the same ones from run to
  run as the adapter grows — whose recall before and after the run is the gate's measure of forgetting. They
  are replayed like any other earlier memory: the probe measures what the adapter keeps of its earlier
  memories, which is what its user gets, and a memory kept out of replay would be forgotten for the probe's
  sake.

Every memory must come from one profile and feed one adapter: anything else is a ValueError (profiles never
mix, see store.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwarden.learning import cues
from memwarden.learning.cues import normalize

Memory = Mapping[str, Any]

PROBE_SIZE = 64


@dataclass(frozen=True)
class Pair:
    memory_id: int | None
    kind: str
    user: str
    assistant: str
    synthetic: bool = False  # the user turn is a wording of the memory's cue, not a user's own turn
    flipped: bool = False  # the dual-mode pair: user and assistant swapped
    heldout: bool = False  # the held-out wording: measured, never trained

    def to_json(self, tagged: bool = False) -> dict[str, Any]:
        """The pair as a conversation; `tagged` adds its memory and wording (the recall file)."""
        out: dict[str, Any] = {"messages": [{"role": "user", "content": self.user},
                                            {"role": "assistant", "content": self.assistant}]}
        if tagged:
            out.update(memory_id=self.memory_id, wording="heldout" if self.heldout else "trained")
        return out


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
    superseded_ids: list[int]  # new memories a newer one with the same cue replaces: never trained
    recall: list[Pair]  # per trained memory (by id): its first trained wording, then its held-out one
    by_kind: dict[str, dict[str, int]]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def heldout_wordings(self) -> list[Pair]:
        return [p for p in self.recall if p.heldout]

    @property
    def consolidate_ids(self) -> list[int]:
        """What a promoted run has learned: the trained memories and the repeats of learned content."""
        return sorted({*self.train_ids, *self.duplicate_ids})

    def summary(self) -> dict[str, Any]:
        """Everything but the pairs: for logs, the run record and the RPC."""
        return {"adapter": self.adapter, "profile": self.profile, "stats": self.stats, "by_kind": self.by_kind,
                "train_ids": len(self.train_ids), "holdout_ids": len(self.holdout_ids),
                "replay_ids": len(self.replay_ids), "probe_ids": len(self.probe_ids),
                "duplicate_ids": len(self.duplicate_ids), "capped_ids": len(self.capped_ids),
                "superseded_ids": len(self.superseded_ids)}


# ---- pieces ----------------------------------------------------------------------------------------------

def content_key(m: Memory) -> str:
    """The dedup key: a hash of the normalised content and response (and a preference's replies)."""
    text = f"{normalize(m['content'])}\x00{normalize(m.get('response'))}"
    if m.get("chosen") or m.get("rejected"):
        text += f"\x00{normalize(m.get('prompt'))}\x00{normalize(m.get('chosen'))}\x00{normalize(m.get('rejected'))}"
    return hashlib.sha256(text.encode()).hexdigest()


def pairs_of(m: Memory, dual: bool, seed: int = 42, extra: Sequence[tuple[str, str]] = ()) -> list[Pair]:
    """A memory's trained pairs: one per trained wording (an exchange's own turn first), the `extra` pairs, then
    (dual mode, an exchange) the flipped one."""
    mid, kind = m.get("id"), m["kind"]
    ex = cues.exchange(m)
    reply = cues.answer(m)
    wordings = cues.wordings(m, seed)
    out = [Pair(mid, kind, w, reply, synthetic=not (ex and w == ex[0])) for w in wordings.trained]
    out += [Pair(mid, kind, q, a, synthetic=True) for q, a in extra
            if normalize(q) != normalize(wordings.heldout)]
    if dual and ex:
        out.append(Pair(mid, kind, ex[1], ex[0], flipped=True))
    return out


def heldout_pair(m: Memory, seed: int = 42) -> Pair | None:
    """The memory's held-out wording as a pair, or None when it has none."""
    w = cues.wordings(m, seed).heldout
    return None if w is None else Pair(m.get("id"), m["kind"], w, cues.answer(m), synthetic=True, heldout=True)


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


def _replay(earlier: Sequence[Memory], new_pairs: int, max_samples: int, fraction: float, reach_all: bool,
            dual: bool, seed: int) -> tuple[list[Memory], list[Pair]]:
    """The earlier memories replayed and their pairs: pass k over them (seeded order) takes each one's k-th
    wording, until the pairs number the share of the training set (or, reach_all, at least one per memory)."""
    if not new_pairs or not earlier or (fraction <= 0 and not reach_all):
        return [], []
    target = round(fraction / (1 - fraction) * new_pairs)
    if reach_all:
        target = max(target, len(earlier))
    target = max(0, min(target, max_samples - new_pairs))
    order = list(earlier)
    random.Random(f"{seed}:replay").shuffle(order)
    wordings = [pairs_of(m, dual, seed) for m in order]
    replay: list[Pair] = []
    taken: dict[int, Memory] = {}
    for k in range(max(len(w) for w in wordings)):
        for i, (m, ps) in enumerate(zip(order, wordings, strict=True)):
            if len(replay) >= target:
                return list(taken.values()), replay
            if k < len(ps):
                replay.append(ps[k])
                taken.setdefault(i, m)
    return list(taken.values()), replay


# ---- the curator -----------------------------------------------------------------------------------------

def curate(new: Sequence[Memory], previous: Sequence[Memory] = (), *, dual: bool = False, max_samples: int = 2000,
           holdout_fraction: float = 0.0, replay_fraction: float = 0.1, replay_all: bool = True, seed: int = 42,
           probe_size: int = PROBE_SIZE, extra: Mapping[int, Sequence[tuple[str, str]]] | None = None) -> Curated:
    """`new`: the adapter's unconsolidated memories; `previous`: those it learned before (replay, probe);
    `extra`: memory id → question/answer pairs written about it (learning.augment)."""
    if not 0 <= holdout_fraction < 1 or not 0 <= replay_fraction < 1 or max_samples < 1:
        raise ValueError("curator: holdout_fraction and replay_fraction must be in [0, 1), max_samples ≥ 1")
    profile, adapter = _check_one_owner([*new, *previous])
    current, _ = cues.supersede([*previous, *new])
    now_current = {id(m) for m in current}
    superseded_new = [m for m in new if id(m) not in now_current]
    new = [m for m in new if id(m) in now_current]
    previous = [m for m in previous if id(m) in now_current]

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
        ps = pairs_of(m, dual, seed, (extra or {}).get(m.get("id"), ()))
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
    if len(kept) == 1 and kept[0][1][-1].flipped and holdout_fraction > 0:
        train_new, holdout = kept[0][1][:-1], kept[0][1][-1:]  # a lone memory: hold out its flipped pair
    holdout_memories = [kept[i][0] for i in sorted(held)]
    train_memories = [m for i, (m, _) in enumerate(kept) if i not in held]
    if not holdout and holdout_fraction == 0:
        holdout = [p for m in train_memories for p in (heldout_pair(m, seed),) if p is not None]
    held_pairs = [p for p in holdout if not p.heldout]  # a held-out memory's own pairs, not a trained one's rewording

    # Probe: a stable, seeded choice of earlier memories.
    prev_unique: list[Memory] = []
    prev_seen: set[str] = set()
    for m in sorted(previous, key=lambda m: m["id"]):
        key = content_key(m)
        if key not in prev_seen:
            prev_seen.add(key)
            prev_unique.append(m)
    n_probe = min(probe_size, len(prev_unique))
    probe_memories = sorted(sorted(prev_unique, key=lambda m: _probe_rank(seed, m))[:n_probe], key=lambda m: m["id"])
    probe = [pairs_of(m, False, seed)[0] for m in probe_memories]

    # Replay: a wording of every earlier memory (replay_all) or the share, whichever is more, within max_samples.
    replay_memories, replay = _replay(prev_unique, len(train_new), max_samples, replay_fraction, replay_all, dual,
                                      seed)

    train = train_new + replay
    random.Random(f"{seed}:train").shuffle(train)
    recall = [p for m in sorted(train_memories, key=lambda m: m.get("id") or 0)
              for p in (pairs_of(m, False, seed)[0], heldout_pair(m, seed)) if p is not None]

    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        ("memories", "duplicates", "capped", "superseded", "train", "holdout", "pairs", "synthetic"), 0))
    for m in [*new, *superseded_new]:
        by_kind[m["kind"]]["memories"] += 1
    for name, group in (("duplicates", duplicates), ("capped", capped), ("superseded", superseded_new),
                        ("train", train_memories),
                        ("holdout", holdout_memories)):
        for m in group:
            by_kind[m["kind"]][name] += 1
    for p in train_new + held_pairs:
        by_kind[p.kind]["pairs"] += 1
        by_kind[p.kind]["synthetic"] += p.synthetic
    stats = {
        "new": len(new) + len(superseded_new), "superseded": len(superseded_new), "unique": len(unique),
        "duplicates": len(duplicates), "capped": len(capped),
        "previous": len(previous), "train_pairs": len(train), "new_train_pairs": len(train_new),
        "holdout_pairs": len(holdout), "replay_pairs": len(replay), "probe_pairs": len(probe),
        "flipped_pairs": sum(p.flipped for p in train_new + held_pairs),
        "synthetic_pairs": sum(p.synthetic for p in train_new + held_pairs),
        "heldout_wordings": sum(p.heldout for p in recall),
        "augmented_pairs": sum(len((extra or {}).get(m.get("id"), ())) for m, _ in kept),
        "kinds": dict(Counter(m["kind"] for m in [*new, *superseded_new])),
        "dual": dual, "max_samples": max_samples, "holdout_fraction": holdout_fraction,
        "replay_fraction": replay_fraction, "replay_all": replay_all, "seed": seed,
    }
    return Curated(
        adapter=adapter, profile=profile, train=train, holdout=holdout, probe=probe,
        train_ids=ids(train_memories), holdout_ids=ids(holdout_memories), replay_ids=ids(replay_memories),
        probe_ids=ids(probe_memories), duplicate_ids=ids(duplicates), capped_ids=ids(capped),
        superseded_ids=ids(superseded_new), recall=recall,
        by_kind={k: dict(v) for k, v in sorted(by_kind.items())}, stats=stats)


def general_share(pairs: int, available: int, fraction: float, max_samples: int) -> int:
    """How many general-text conversations make up `fraction` of a training set of `pairs` pairs and them, within
    max_samples and the `available` ones."""
    if fraction <= 0 or not available or not pairs:
        return 0
    return min(available, round(fraction / (1 - fraction) * pairs), max(0, max_samples - pairs))


def with_general(train: Sequence[Pair], general: Sequence[Mapping[str, Any]], fraction: float, max_samples: int,
                 seed: int, every_pass: bool = False) -> list[Pair | Mapping[str, Any]]:
    """`train` with general-text conversations ({"messages": …}, the base's general rehearsal) mixed in, each
    tagged {"general": true} for the trainer (learning.general_rehearsal_loss): a seeded choice of them making up
    `fraction` of the result, within max_samples, the run's size choosing the seed so that successive runs
    rehearse different ones. `every_pass`: all of them within max_samples, of which the trainer draws that share
    afresh at every pass (learning.general_rehearsal_draw, hyper.general_per_pass)."""
    if fraction <= 0 or not general or not train:
        return list(train)
    n = general_share(len(train), len(general), fraction, max_samples)
    chosen = (list(general)[: max(0, max_samples - len(train))] if every_pass
              else random.Random(f"{seed}:general:{len(train)}").sample(list(general), n))
    out: list[Pair | Mapping[str, Any]] = [*train, *({"messages": g["messages"], "general": True} for g in chosen)]
    random.Random(f"{seed}:general-train").shuffle(out)
    return out


def write_jsonl(path: Path | str, pairs: Iterable[Pair | Mapping[str, Any]], tagged: bool = False) -> int:
    """Write pairs as JSONL ({"messages": [...]} per line; `tagged`: with memory_id and wording; a general-rehearsal
    conversation with its tag; a mapping without messages as it is) atomically: a
    temp file in the same directory, fsynced, then renamed over `path`. Returns the number of lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for p in pairs:
                obj = (p.to_json(tagged) if isinstance(p, Pair) else
                       {"messages": list(p["messages"]), **({"general": True} if p.get("general") else {})}
                       if "messages" in p else dict(p))
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
