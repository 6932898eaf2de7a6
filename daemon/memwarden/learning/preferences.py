"""A run's preference pairs for the DPO stage (training/dpo.py): which are trained, which held out (pure, but
for write()).

The pairs are the preference memories the run learns (its curated memories: trained and held out, duplicates
and superseded ones gone). The memories the curator held out of the supervised stage stay held out here; more
are added, by a seeded shuffle, until round(heldout_fraction × n) are (at least one, never all), so that
preference accuracy is measured on pairs the DPO stage never trains. Fewer than two pairs: no DPO stage.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memwarden.learning.curator import write_jsonl

Memory = Mapping[str, Any]
FILE = "preferences.jsonl"


@dataclass(frozen=True)
class PreferenceSplit:
    train: tuple[Memory, ...]
    heldout: tuple[Memory, ...]

    def lines(self) -> list[dict[str, Any]]:
        return [{"memory_id": m.get("id"), "prompt": m["prompt"], "chosen": m["chosen"], "rejected": m["rejected"],
                 "heldout": held} for held, group in ((False, self.train), (True, self.heldout)) for m in group]


def is_preference(m: Memory) -> bool:
    return bool(m.get("prompt") and m.get("chosen") and m.get("rejected"))


def split(memories: Sequence[Memory], learned: Collection[int], held_out: Collection[int], fraction: float,
          seed: int) -> PreferenceSplit:
    """`learned`: the ids of the run's curated memories; `held_out`: those of them the curator held out."""
    pairs = sorted((m for m in memories if m.get("id") in learned and is_preference(m)), key=lambda m: m["id"])
    if len(pairs) < 2:
        return PreferenceSplit((), ())
    want = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held = [m for m in pairs if m["id"] in held_out][:want]
    rest = [m for m in pairs if m["id"] not in {h["id"] for h in held}]
    random.Random(f"{seed}:preferences:{len(pairs)}").shuffle(rest)
    held += rest[: want - len(held)]
    chosen = {m["id"] for m in held}
    return PreferenceSplit(tuple(m for m in pairs if m["id"] not in chosen),
                           tuple(sorted(held, key=lambda m: m["id"])))


def write(path: Path, pairs: PreferenceSplit) -> int:
    """The pairs as JSONL, atomically (curator.write_jsonl)."""
    return write_jsonl(path, pairs.lines())
