"""The DPO stage: does a run's preference accuracy on held-out pairs rise, at what cost in recall and CPU?

--pairs preference memories (default 40) are drawn with --seed: a request by a named person ("My cousin Zeno asked
me to water the plants. How should I answer?"), a chosen reply in one of several kind, helpful forms and a
rejected one in one of several curt forms, so that what is preferred is a manner, to be carried over to requests
never trained. As the daemon does (learning/preferences.py), round(learning.dpo_holdout_fraction × pairs) are
held out; the supervised stage trains 40 fact exchanges (bench/recall_round.py's) and each trained preference's
prompt → chosen reply, for --sft-steps steps (60: a fixed length, not until recall, so that both runs train the
same supervised stage). Two trainer runs as the daemon runs them (`python -m memwarden.training JOB.json`), with
the daemon's other default learning settings, on the demo base (--base, else `model init-demo`'s default build
into a temporary directory): the baseline with dpo_steps 0, then the same job with learning.dpo_steps (or
--steps).
Reported: held-out preference accuracy before → after the stage, recall of the facts and preferences before →
after it, the steps, and each run's CPU seconds (user + system of the trainer): the stage's CPU is the difference
from the baseline, and its ratio to the baseline's.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
from pathlib import Path

from _common import cpu_pressure, fmt, fmt_ratio, parser, ratio, table
from _recall import default_hyper, demo_base, train_on
from recall_round import NAMES, RELATIONS, facts, write

from memwarden.config.schema import LearningConfig
from memwarden.learning.jobspec import Hyper
from memwarden.learning.preferences import split
from memwarden.learning.preferences import write as write_preferences

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


def train(root: Path, base: Path, name: str, hyper: Hyper, files: dict[str, str]) -> dict:
    trained = train_on(root, base, name, hyper, train_file=files["train"], holdout_file=files["holdout"],
                       recall_file=files["recall"], preference_file=files["preferences"])
    r, wall, cpu = trained.report, trained.wall_s, trained.cpu_s
    p = r.preference
    return {"run": name, "steps": r.step, "dpo_steps": p.steps, "pairs": p.pairs, "heldout": p.heldout,
            "accuracy_before": p.accuracy_before, "accuracy_after": p.accuracy_after,
            "recall_before": f"{p.recall_before.recalled}/{p.recall_before.memories}" if p.steps else None,
            "recall_after": f"{r.recall.recalled}/{r.recall.memories}",
            "general": f"{r.eval.general_loss_before:.3f}→{r.eval.general_loss_after:.3f}"
            if r.eval.general_loss_before is not None else None,
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--steps", type=int, default=None, help="override learning.dpo_steps")
    p.add_argument("--sft-steps", type=int, default=60, help="steps of the supervised stage")
    p.add_argument("--beta", type=float, default=None, help="override learning.dpo_beta")
    p.add_argument("--lr", type=float, default=None, help="override learning.dpo_lr")
    p.add_argument("--base", type=Path, default=None, help="a demo base already built")
    args = p.parse_args()
    cfg = LearningConfig()
    pressure = cpu_pressure()
    with tempfile.TemporaryDirectory(prefix="dpo-stage-") as tmp:
        root = Path(tmp)
        base = demo_base(root, args.base)
        prefs = preferences(args.seed, args.pairs)
        pref_split = split(prefs, {m["id"] for m in prefs}, (), cfg.dpo_holdout_fraction, cfg.seed)
        write_preferences(root / "preferences.jsonl", pref_split)
        pairs = facts(args.seed, 44)
        trained = pairs[:40] + [(m["prompt"], m["chosen"]) for m in pref_split.train]
        files = {"train": write(root / "train.jsonl", trained), "holdout": write(root / "holdout.jsonl", pairs[40:]),
                 "recall": write(root / "recall.jsonl", trained), "preferences": str(root / "preferences.jsonl")}
        dpo_steps = args.steps if args.steps is not None else cfg.dpo_steps
        hyper = dataclasses.replace(default_hyper(), max_steps=args.sft_steps, recall_every=0, dpo_steps=dpo_steps,
                                    dpo_beta=args.beta or cfg.dpo_beta, dpo_lr=args.lr or cfg.dpo_lr)
        rows = [train(root, base, "baseline", dataclasses.replace(hyper, dpo_steps=0), files),
                train(root, base, "dpo", hyper, files)]
    stage_cpu = rows[1]["cpu_s"] - rows[0]["cpu_s"]
    text = table(["RUN", "STEPS", "DPO STEPS", "PAIRS", "HELD OUT", "PREFERRED", "RECALL", "GENERAL", "WALL",
                  "CPU"],
                 [[r["run"], r["steps"], r["dpo_steps"], r["pairs"], r["heldout"],
                   "-" if r["accuracy_before"] is None else f"{r['accuracy_before']:.2f}→{r['accuracy_after']:.2f}",
                   r["recall_after"] if r["recall_before"] is None else f"{r['recall_before']}→{r['recall_after']}",
                   r["general"] or "-", f"{r['wall_s']} s", f"{r['cpu_s']} s"] for r in rows])
    print(text)
    print(f"the stage: {fmt(stage_cpu)} s of CPU, {fmt_ratio(ratio(rows[1]['cpu_s'], rows[0]['cpu_s']))} the "
          f"baseline's; beta {hyper.dpo_beta}, lr {hyper.dpo_lr}; CPU pressure (avg60) {fmt(pressure)} %")
    if args.json:
        print(json.dumps({"pairs": args.pairs, "seed": args.seed, "runs": rows, "stage_cpu_s": round(stage_cpu, 1),
                          "cpu_pressure": pressure}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
