"""Cue wordings against one prompt per kind: can forty journal entries be told apart?

40 distinct journal entries (content only, no response: "Walked to the old mill with Ines; the heron was back.")
are drawn from place/name/event lists with --seed, one a day. They are trained two ways on the demo base
(`memwardenctl model init-demo` into a temporary directory unless --base is given), each with the daemon's default
learning settings unless --lr / --steps override them, the trainer run as the daemon runs it:

- kind prompt: the curation before cues, one of three generic journal prompts per entry, chosen by the content's
  hash ("Write a journal entry about your day." → the entry) — what forty entries shared;
- cue wordings: learning/curator.py as it is (learning/cues.py: two trained wordings per entry of a cue derived
  from its date and opening words, one held out).

Recall is the trainer's own (learning/recall_score.py): an entry is recalled when ≥ 80 % of its content words come
back under greedy decoding, from the prompt it was trained on; for the cue wordings also from the held-out one.
A cue derived from an entry's opening words names those words, so part of the answer is in the prompt: the gain
in token accuracy over the kind prompt is what keying buys, not what memorising does. The baseline is the base
model itself (one step at lr 1e-8) on the cue wordings' recall file, in the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
import tempfile
from pathlib import Path

from _common import parser
from _recall import default_hyper, demo_base, train_on

from memwarden.learning import curator
from memwarden.learning.jobspec import Hyper

DAY0 = 1_767_225_600.0  # 2026-01-01
PLACES = ("old mill", "harbour", "market", "library", "north beach", "allotment", "bakery", "station",
          "chapel", "ferry pier", "orchard", "lighthouse")
NAMES = ("Ines", "Mira", "Tomas", "Aiko", "Bruno", "Carla", "Dario", "Elif", "Farid", "Greta", "Hugo", "Ilse")
EVENTS = ("the heron was back", "it rained all afternoon", "we found a lost glove", "the bread was still warm",
          "a brass band played", "the tide was out", "we argued about the map", "a dog followed us home",
          "the clock tower struck noon", "we saw the first swallows")
KIND_PROMPTS = ("Write a journal entry about your day.", "What would you write in your journal today?",
                "How did your day go?")  # the journal prompts of the curation before cues


def entries(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    combos = rng.sample([(p, m, e) for p in PLACES for m in NAMES for e in EVENTS], n)
    return [{"id": i + 1, "profile": "bench", "kind": "journal", "response": None, "importance": 5,
             "created_at": DAY0 + 86400 * i, "adapter": "bench",
             "content": f"Walked to the {place} with {name}; {event}."}
            for i, (place, name, event) in enumerate(combos)]


def kind_prompt(content: str) -> str:
    return KIND_PROMPTS[int.from_bytes(hashlib.sha256(content.encode()).digest()[:4], "big") % len(KIND_PROMPTS)]


def kind_pairs(memories: list[dict]) -> list[curator.Pair]:
    return [curator.Pair(m["id"], "journal", kind_prompt(m["content"]), m["content"], synthetic=True)
            for m in memories]


def cue_pairs(memories: list[dict], seed: int) -> tuple[list[curator.Pair], list[curator.Pair]]:
    """Every entry's trained pairs, and the recall file: its first trained wording and its held-out one."""
    train, recall = [], []
    for m in memories:
        ps = curator.pairs_of(m, False, seed)
        train += ps
        recall += [ps[0], curator.heldout_pair(m, seed)]
    return train, recall


def train(root: Path, base: Path, name: str, hyper: Hyper, train_file: Path, recall_file: Path,
          holdout: Path) -> dict:
    trained = train_on(root, base, name, hyper, general=False, train_file=str(train_file), holdout_file=str(holdout),
                       recall_file=str(recall_file))
    r = trained.report.recall
    return {"run": name, "lr": hyper.lr, "steps": trained.report.step, "recalled": r.recalled,
            "memories": r.memories, "token_accuracy": r.token_accuracy, "heldout_recalled": r.heldout_recalled,
            "heldout_memories": r.heldout_memories, "heldout_token_accuracy": r.heldout_token_accuracy,
            "wall_s": trained.wall_s}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=40)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--lr", type=float, default=None, help="override learning.lr")
    p.add_argument("--steps", type=int, default=None, help="override learning.max_steps")
    p.add_argument("--base", type=Path, default=None, help="a demo base already built")
    args = p.parse_args()
    hyper = default_hyper()
    changes = {k: v for k, v in (("lr", args.lr), ("max_steps", args.steps)) if v is not None}
    with tempfile.TemporaryDirectory(prefix="cue-recall-") as tmp:
        root = Path(tmp)
        base = demo_base(root, args.base)
        memories = entries(args.seed, args.entries + 4)
        trained, held = memories[: args.entries], memories[args.entries:]
        files = {}
        cue_train, cue_recall = cue_pairs(trained, hyper.seed)
        for name, pairs in (("kind", kind_pairs(trained)), ("kind-holdout", kind_pairs(held)), ("cue", cue_train),
                            ("cue-recall", cue_recall), ("cue-holdout", cue_pairs(held, hyper.seed)[0])):
            files[name] = root / f"{name}.jsonl"
            curator.write_jsonl(files[name], pairs, tagged=name == "cue-recall")
        rows = [train(root, base, "base", dataclasses.replace(hyper, lr=1e-8, max_steps=1, warmup_steps=0),
                      files["cue"], files["cue-recall"], files["cue-holdout"]),
                train(root, base, "kind", dataclasses.replace(hyper, **changes), files["kind"], files["kind"],
                      files["kind-holdout"]),
                train(root, base, "cue", dataclasses.replace(hyper, **changes), files["cue"], files["cue-recall"],
                      files["cue-holdout"])]
    kind_acc = rows[1]["token_accuracy"] or 0.0
    print(f"{'RUN':6} {'LR':>8} {'STEPS':>5} {'RECALLED':>9} {'TOKEN ACC':>9} {'× KIND':>7} "
          f"{'HELD-OUT':>9} {'HO ACC':>7} {'WALL':>7}")
    for r in rows:
        ratio = f"{r['token_accuracy'] / kind_acc:7.2f}" if kind_acc else "      -"
        held_out = f"{r['heldout_recalled']:4d}/{r['heldout_memories']:<4d}" if r["heldout_memories"] else "        -"
        ho_acc = f"{r['heldout_token_accuracy']:7.3f}" if r["heldout_token_accuracy"] is not None else "      -"
        print(f"{r['run']:6} {r['lr']:8.0e} {r['steps']:5d} {r['recalled']:4d}/{r['memories']:<4d} "
              f"{r['token_accuracy']:9.3f} {ratio} {held_out} {ho_acc} {r['wall_s']:6.1f}s")
    if args.json:
        print(json.dumps({"entries": args.entries, "seed": args.seed, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
