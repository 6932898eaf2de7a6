"""The DPO stage: does a run's preference accuracy on held-out pairs rise, at what cost in recall, general ability
and CPU?

--pairs preference memories (default 40) are drawn with --seed: a request by a named person ("My cousin Zeno asked
me to water the plants. How should I answer?"), a chosen reply in one of several kind, helpful forms and a
rejected one in one of several curt forms, so that what is preferred is a manner, to be carried over to requests
never trained. As the daemon does (learning/preferences.py), round(learning.dpo_holdout_fraction × pairs) are
held out; the supervised stage trains 40 fact exchanges (bench/recall_round.py's) and each trained preference's
prompt → chosen reply, for --sft-steps steps (60: a fixed length, not until recall, so that every run trains the
same supervised stage). With --recall-facts N it trains N facts instead and stops, as the daemon's runs do, once
it recalls learning.min_recall of them (at most --sft-steps, else learning.max_steps), and recall is measured on
the facts alone: what the stage must not take away; its preferences are then in the demo base's own words, about
other people than the facts (what to cook for whom: the chosen reply names the person back with a reason, the
rejected one is a bare dish). The runs are deterministic on the CPU, so every run's supervised stage is the same
one. Trainer runs as the daemon runs them (`python -m memwarden.training JOB.json`), with the daemon's other
default learning settings, on the demo base (--base, else `model init-demo`'s default build into a temporary
directory): the baseline with dpo_steps 0, then the same job with learning.dpo_steps (or --steps) at each --lr
(learning.dpo_lr, else the schema's).
Reported per run: held-out preference accuracy before → after the stage, recall before → after it, whether the
stage lost more recall than learning.forgetting_epsilon (the gate's `dpo_forgot` check, whatever an earlier check
decides), the general-probe loss of the base → after the run, the gate's verdict at the schema's defaults, and
each run's CPU seconds (user + system of the trainer): the stage's CPU is the difference from the baseline, and
its ratio to the baseline's.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path

from _common import cpu_pressure, fmt, fmt_ratio, parser, ratio, table
from _recall import default_hyper, demo_base, train_on
from recall_round import NAMES, RELATIONS, facts, write

from memwarden.config.schema import LearningConfig
from memwarden.learning.jobspec import Hyper
from memwarden.learning.preferences import split
from memwarden.learning.preferences import write as write_preferences
from memwarden.learning.promotion import SLACK, Gate, judge
from memwarden.training.demo_corpus import DAYS, FOODS

REQUESTS = ("water the plants", "feed the cat", "lend a ladder", "fix the bike", "carry the boxes",
            "check the mail", "walk the dog", "bake a cake", "paint the fence", "mend the coat")
KIND = ("Tell {name} you will gladly {req} tomorrow, and thank them for asking.",
        "Say yes to {name} warmly: you are happy to {req} and glad to help.",
        "Reply kindly that you can {req} for {name} this week.")
CURT = ("Tell {name} no and that you are far too busy to {req}.",
        "Ignore {name}; to {req} is not your problem.",
        "Say {name} should {req} alone and stop asking.")


def preferences(seed: int, n: int) -> list[dict]:
    rng = random.Random(f"{seed}:preferences")
    out = []
    for i, name in enumerate(rng.sample(NAMES, min(n, len(NAMES)))[:n]):
        rel, req = rng.choice(RELATIONS), rng.choice(REQUESTS)
        out.append({"id": i + 1, "kind": "preference",
                    "prompt": f"My {rel} {name} asked me to {req}. How should I answer?",
                    "chosen": rng.choice(KIND).format(name=name, req=req),
                    "rejected": rng.choice(CURT).format(name=name, req=req)})
    return out


def corpus_preferences(seed: int, n: int, unnamed: Collection[str] = ()) -> list[dict]:
    """n preference memories in the demo base's own words (training/demo_corpus.py): what to cook for a named
    person, the chosen reply naming them back with a reason, the rejected one a bare dish. Words the base never saw
    cost the supervised stage many tokens at a high loss, and it then learns them instead of the facts."""
    rng = random.Random(f"{seed}:corpus-preferences")
    names = [x for x in NAMES if x not in unnamed]
    out = []
    for i, name in enumerate(rng.sample(names, min(n, len(names)))[:n]):
        rel, food, day = rng.choice(RELATIONS), rng.choice(FOODS), rng.choice(DAYS)
        out.append({"id": i + 1, "kind": "preference",
                    "prompt": f"What should I cook for my {rel} {name} on {day}?",
                    "chosen": f"You could cook {food} for your {rel} {name}; {name} liked it last {day}.",
                    "rejected": f"You could cook {rng.choice(FOODS)}."})
    return out


def train(root: Path, base: Path, name: str, hyper: Hyper, files: dict[str, str], gate: Gate) -> dict:
    trained = train_on(root, base, name, hyper, train_file=files["train"], holdout_file=files["holdout"],
                       recall_file=files["recall"], preference_file=files["preferences"])
    r, wall, cpu = trained.report, trained.wall_s, trained.cpu_s
    p = r.preference
    verdict = judge(r.judged(), gate)
    drop = (p.recall_before.recalled - r.recall.recalled) / r.recall.memories if p.steps and r.recall.memories else None
    return {"run": name, "dpo_lr": hyper.dpo_lr if p.steps else None, "steps": r.step, "dpo_steps": p.steps,
            "sft_steps": r.step - p.steps, "stopped_early": r.stopped_early, "pairs": p.pairs, "heldout": p.heldout,
            "accuracy_before": p.accuracy_before, "accuracy_after": p.accuracy_after,
            "recall_before": f"{p.recall_before.recalled}/{p.recall_before.memories}" if p.steps else None,
            "recall_after": f"{r.recall.recalled}/{r.recall.memories}", "recall_drop": drop,
            "dpo_forgot": drop is not None and drop > gate.forgetting_epsilon + SLACK,
            "general_before": r.eval.general_loss_before, "general_after": r.eval.general_loss_after,
            "gate": verdict.code, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


HEADERS = ["RUN", "DPO LR", "STEPS (SFT + DPO)", "HELD OUT", "PREFERRED", "RECALL", "DPO_FORGOT", "GENERAL", "GATE",
           "WALL", "CPU"]


def _row(r: dict) -> list:
    general = "-" if r["general_before"] is None else (
        f"{r['general_before']:.3f}→{r['general_after']:.3f} ({r['general_after'] / r['general_before'] - 1:+.1%})")
    return [r["run"], f"{r['dpo_lr']:g}" if r["dpo_lr"] else "-", f"{r['sft_steps']} + {r['dpo_steps']}",
            r["heldout"] or "-",
            "-" if r["accuracy_before"] is None else f"{r['accuracy_before']:.2f}→{r['accuracy_after']:.2f}",
            r["recall_after"] if r["recall_before"] is None else f"{r['recall_before']}→{r['recall_after']}",
            "-" if r["recall_drop"] is None else ("yes" if r["dpo_forgot"] else "no"), general, r["gate"],
            f"{r['wall_s']} s", f"{r['cpu_s']} s"]


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--steps", type=int, default=None, help="override learning.dpo_steps")
    p.add_argument("--sft-steps", type=int, default=None,
                   help="steps of the supervised stage (60; with --recall-facts at most this many, learning.max_steps)")
    p.add_argument("--beta", type=float, default=None, help="override learning.dpo_beta")
    p.add_argument("--lr", type=float, nargs="+", default=None,
                   help="learning.dpo_lr: one run with the stage per value (default: the schema's)")
    p.add_argument("--recall-facts", type=int, default=None, metavar="N",
                   help="N facts, the supervised stage trained until it recalls them, recall measured on them alone")
    p.add_argument("--base", type=Path, default=None, help="a demo base already built")
    args = p.parse_args()
    cfg = LearningConfig()
    gate = Gate.of(cfg)
    pressure = cpu_pressure()
    until_recall = args.recall_facts is not None
    n_facts = args.recall_facts if until_recall else 40
    with tempfile.TemporaryDirectory(prefix="dpo-stage-") as tmp:
        root = Path(tmp)
        base = demo_base(root, args.base)
        pairs = facts(args.seed, n_facts + 4)
        # Where recall is measured, no preference names a person a fact is about: recall is of the facts alone.
        prefs = (corpus_preferences(args.seed, args.pairs, {q.split()[-1].rstrip("?") for q, _ in pairs})
                 if until_recall else preferences(args.seed, args.pairs))
        pref_split = split(prefs, {m["id"] for m in prefs}, (), cfg.dpo_holdout_fraction, cfg.seed)
        write_preferences(root / "preferences.jsonl", pref_split)
        trained = pairs[:n_facts] + [(m["prompt"], m["chosen"]) for m in pref_split.train]
        files = {"train": write(root / "train.jsonl", trained),
                 "holdout": write(root / "holdout.jsonl", pairs[n_facts:]),
                 "recall": write(root / "recall.jsonl", pairs[:n_facts] if until_recall else trained),
                 "preferences": str(root / "preferences.jsonl")}
        dpo_steps = args.steps if args.steps is not None else cfg.dpo_steps
        sft_steps = args.sft_steps or (cfg.max_steps if until_recall else 60)
        hyper = dataclasses.replace(default_hyper(), max_steps=sft_steps, dpo_steps=dpo_steps,
                                    recall_every=cfg.recall_every if until_recall else 0,
                                    dpo_beta=args.beta or cfg.dpo_beta)
        rows = [train(root, base, "baseline", dataclasses.replace(hyper, dpo_steps=0), files, gate)]
        if until_recall and not rows[0]["stopped_early"]:
            print(table(HEADERS, [_row(rows[0])]))
            raise SystemExit(f"the supervised stage did not recall learning.min_recall {hyper.min_recall:g} of the "
                             f"facts in {sft_steps} steps: no recall for the DPO stage to keep")
        for lr in args.lr or [cfg.dpo_lr]:
            rows.append(train(root, base, f"dpo-{lr:g}", dataclasses.replace(hyper, dpo_lr=lr), files, gate))
    print(table(HEADERS, [_row(r) for r in rows]))
    for r in rows[1:]:
        stage_cpu = r["cpu_s"] - rows[0]["cpu_s"]
        print(f"{r['run']}: the stage {fmt(stage_cpu)} s of CPU, {fmt_ratio(ratio(r['cpu_s'], rows[0]['cpu_s']))} "
              "the baseline's")
    print(f"beta {hyper.dpo_beta}; recall {'of the facts alone' if until_recall else 'of every trained pair'}; "
          f"gate at the schema's defaults; CPU pressure (avg60) {fmt(pressure)} %")
    if args.json:
        print(json.dumps({"pairs": args.pairs, "seed": args.seed, "facts": n_facts, "until_recall": until_recall,
                          "runs": rows, "cpu_pressure": pressure}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
