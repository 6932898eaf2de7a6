"""What a daemon round of forty facts trains that recall_round.py does not: one difference at a time.

Two fact sets of the same size: recall_round.py's (seed 7, every name once, 44 facts) and continual_rounds.py's
first round (seed 11, 40 facts keyed by (relation, name), so one name may belong to two or three people, and
--journal journal entries). Each is curated as the daemon curates it (learning/curator.py at the schema's
learning.* defaults: three cue wordings a memory, one held out; a tenth of the memories held out), and trained
on the demo base as the daemon trains it, with one of these training sets:

  one      each trained memory's first wording only (an exchange's own user turn): one pair a memory, as
           recall_round.py trains
  cues     the curated training set: every trained wording of every memory (the daemon's pairs without general
           rehearsal)
  general  the curated set with learning.general_rehearsal_fraction of the base's general_rehearsal.jsonl mixed
           in: what a first round through the daemon trains

Recall is scored in every row the daemon's way, on the curation's recall file (each trained memory's first wording
and its held-out wording, learning/recall_score.py), with the early stop at the schema's defaults (min_recall,
recall_every, recall_check_sample) and --steps as max_steps (--budget: the daemon's step budget, learning.max_epochs
passes over the row's pairs when that is more). --general-fraction, --general-loss and --general-draw set
learning.general_rehearsal_fraction, _loss and _draw for the `general` set. A row is FACTS:SET, e.g. `rounds:one`;
--row is repeatable, one trainer at a time. Besides the run's final recall, each row reports the first step at which
the early stop's sample (recall_check_sample memories) reached min_recall, and its best share: how far a row that
trained to max_steps was from its target.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from _common import cpu_pressure, emit, parser, table
from _recall import default_hyper, train_on
from continual_rounds import DAY0, rounds_of_memories
from recall_round import facts

from memwarden.config.schema import LearningConfig
from memwarden.learning import curator
from memwarden.learning.jobspec import GENERAL_REHEARSAL_FILE
from memwarden.learning.preparation import Mixed, mix_general, read_general, step_budget

SETS = ("one", "cues", "general")


def unique_name_memories(n: int) -> list[dict]:
    return [{"id": i, "profile": "bench", "kind": "conversation", "importance": 5, "adapter": "bench",
             "created_at": DAY0 + i, "content": q, "response": a} for i, (q, a) in enumerate(facts(7, n), 1)]


def training_set(cur: curator.Curated, which: str, base: Path, cfg: LearningConfig) -> Mixed:
    if which == "one":
        pairs = [p for p in cur.recall if not p.heldout]
        return Mixed(pairs, 0, len(pairs))
    if which == "cues":
        return Mixed(cur.train, 0, len(cur.train))
    return mix_general(cfg, cur.train, read_general(base / GENERAL_REHEARSAL_FILE))


def run_row(row: str, base: Path, root: Path, args) -> dict:
    fact_set, _, which = row.partition(":")
    if which not in SETS or fact_set not in ("unique", "rounds"):
        raise SystemExit(f"--row {row!r}: FACTS is unique or rounds, SET one of {', '.join(SETS)}")
    cfg = dataclasses.replace(LearningConfig(), **{k: v for k, v in (
        ("general_rehearsal_fraction", args.general_fraction), ("general_rehearsal_loss", args.general_loss),
        ("general_rehearsal_draw", args.general_draw)) if v is not None})
    memories = (unique_name_memories(44) if fact_set == "unique"
                else rounds_of_memories(11, 1, args.facts, args.journal)[0])
    cur = curator.curate(memories, [], dual=cfg.dual, max_samples=cfg.max_samples,
                         holdout_fraction=cfg.holdout_fraction, replay_fraction=cfg.replay_fraction,
                         replay_all=cfg.replay_all, seed=cfg.seed)
    mixed = training_set(cur, which, base, cfg)
    steps = step_budget(cfg, mixed.pairs) if args.budget else args.steps
    hyper = dataclasses.replace(default_hyper(), general_loss=cfg.general_rehearsal_loss,
                                general_per_pass=mixed.per_pass, **({} if steps is None else {"max_steps": steps}))
    work = root / (f"{row.replace(':', '-')}-{hyper.max_steps}-{cfg.general_rehearsal_fraction}-{hyper.general_loss}"
                   f"-{cfg.general_rehearsal_draw}")
    work.mkdir(parents=True)
    curator.write_jsonl(work / "train.jsonl", mixed.lines)
    curator.write_jsonl(work / "holdout.jsonl", cur.holdout)
    curator.write_jsonl(work / "recall.jsonl", cur.recall, tagged=True)
    pressure = cpu_pressure()
    trained = train_on(work, base, "run", hyper, train_file=str(work / "train.jsonl"),
                       holdout_file=str(work / "holdout.jsonl"), recall_file=str(work / "recall.jsonl"),
                       cpu_threads=args.threads)
    r = trained.report
    checks = [json.loads(line) for line in (work / "run-run" / "events.jsonl").read_text().splitlines()
              if '"event":"recall"' in line]
    shares = [(c["step"], c["recalled"] / c["memories"]) for c in checks if c.get("memories")]
    return {"sample_reached_at": next((s for s, f in shares if f >= hyper.min_recall), None),
            "sample_best": max((f for _, f in shares), default=None), "sample_trajectory": shares,
            "row": row, "general_fraction": cfg.general_rehearsal_fraction, "general_loss": hyper.general_loss,
            "general_draw": cfg.general_rehearsal_draw, "pairs": mixed.pairs, "memories": len(cur.train_ids),
            "max_steps": hyper.max_steps,
            "steps": r.step, "stopped_early": r.stopped_early, "recalled": r.recall.recalled,
            "recall_memories": r.recall.memories, "heldout_recalled": r.recall.heldout_recalled,
            "token_accuracy": r.recall.token_accuracy, "general_before": r.eval.general_loss_before,
            "general_after": r.eval.general_loss_after, "wall_s": trained.wall_s, "cpu_s": trained.cpu_s,
            "cpu_pressure_start": pressure}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="a demo base (memwardenctl model init-demo)")
    p.add_argument("--row", action="append", default=[], metavar="FACTS:SET",
                   help="unique|rounds : one|cues|general (repeatable)")
    p.add_argument("--facts", type=int, default=40, help="facts in the rounds set")
    p.add_argument("--journal", type=int, default=4, help="journal entries in the rounds set")
    p.add_argument("--steps", type=int, default=None, help="override learning.max_steps")
    p.add_argument("--budget", action="store_true", help="max_steps as the daemon's step budget for the row")
    p.add_argument("--general-fraction", type=float, default=None, help="learning.general_rehearsal_fraction")
    p.add_argument("--general-loss", choices=("ce", "distill"), default=None, help="learning.general_rehearsal_loss")
    p.add_argument("--general-draw", choices=("run", "pass"), default=None, help="learning.general_rehearsal_draw")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads in the trainer")
    p.add_argument("--work", type=Path, required=True, help="directory for the rows' files (kept)")
    p.add_argument("--out", type=Path, default=None, help="append each row as a JSON line")
    args = p.parse_args()
    rows = []
    for row in args.row:
        rows.append(run_row(row, args.base, args.work, args))
        print(json.dumps(rows[-1]), flush=True)
        if args.out is not None:
            with args.out.open("a") as fh:
                fh.write(json.dumps(rows[-1]) + "\n")
    emit("One round, one difference at a time", table(
        ["row", "pairs", "steps (max)", "sample reached", "recalled", "held-out wording", "token acc.",
         "general probe", "CPU", "wall"],
        [[f"{r['row']} {r['general_loss']} {r['general_fraction']} {r['general_draw']}", r["pairs"],
          f"{r['steps']} ({r['max_steps']})",
          r["sample_reached_at"] or f"no (best {r['sample_best'] or 0:.2f})", f"{r['recalled']}/{r['recall_memories']}",
          f"{r['heldout_recalled']}/{r['recall_memories']}", f"{r['token_accuracy']:.3f}",
          f"{r['general_before']:.3f}→{r['general_after']:.3f}", f"{r['cpu_s']:.0f} s", f"{r['wall_s']:.0f} s"]
         for r in rows]), {"rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
