"""Recall after one round: does an adapter trained on 40 personal facts give them back?

40 distinct fact exchanges ("What do you remember about my godson Zeno?" → "Your godson Zeno lives in Tbilisi and
grows beans.") are drawn from name/relation/city/hobby lists with --seed (each name once). The trainer is run as
the daemon runs it (`python -m memwarden.training JOB.json`) on the demo base (`memwardenctl model init-demo`'s
default build into a temporary directory, unless --base is given), with the daemon's default learning settings
(learning.* in the schema: lr, rank, alpha, dropout, micro_batch, grad_accum, max_steps, warmup_steps,
max_seq_len, seed, target_modules, recall_sample, recall_max_new_tokens, min_recall, recall_every — so the run
stops once its recall reaches the target) unless --lr / --steps override them. Each
--try 'KEY=VALUE ...' adds a row with those job spec hyper fields changed: a sweep, one trainer at a time. All
40 pairs are trained and are the recall file (each memory decoded once, greedily); 4 further facts are the
holdout; the base's general_probe.jsonl is the general probe. Reported: steps trained, the trainer's own recall
(learning/recall_score.py: recalled when ≥ 80 % of the answer's content words come back), mean token accuracy,
holdout and general-probe loss before→after, and the trainer process's wall and CPU time (user + system), beside
the base model's figures (the same run with 0 steps is not allowed, so the baseline is a 1-step run at lr 1e-8:
the base model as it is).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
from pathlib import Path

from _common import parser
from _recall import default_hyper, demo_base, train_on

from memwarden.learning.jobspec import Hyper

NAMES = ("Zeno", "Ines", "Mira", "Tomas", "Aiko", "Bruno", "Carla", "Dario", "Elif", "Farid", "Greta", "Hugo",
         "Ilse", "Jonas", "Kira", "Leon", "Maren", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara",
         "Ugo", "Vera", "Wim", "Xenia", "Yusuf", "Zora", "Anya", "Boris", "Celia", "Dmitri", "Esme", "Filip",
         "Gaia", "Hanno", "Iris", "Jasper", "Kasia", "Lotte", "Milo", "Nadia")
RELATIONS = ("godson", "cousin", "neighbour", "aunt", "colleague", "friend", "nephew", "niece", "uncle",
             "landlord", "teacher", "sister")
CITIES = ("Tbilisi", "Oslo", "Lisbon", "Porto", "Krakow", "Tallinn", "Ghent", "Bergen", "Lyon", "Turin",
          "Graz", "Malmo", "Riga", "Split", "Bilbao", "Leeds")
HOBBIES = ("grows beans", "plays the harp", "keeps bees", "restores clocks", "paints ships", "bakes rye bread",
           "collects stamps", "builds kites", "sings in a choir", "rows on the river", "carves spoons",
           "breeds canaries")


def facts(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = rng.sample(NAMES, n)
    out = []
    for name in names:
        rel, city, hobby = rng.choice(RELATIONS), rng.choice(CITIES), rng.choice(HOBBIES)
        out.append((f"What do you remember about my {rel} {name}?",
                    f"Your {rel} {name} lives in {city} and {hobby}."))
    return out


def write(path: Path, pairs: list[tuple[str, str]]) -> str:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return str(path)


def parse_try(text: str) -> dict:
    """'lr=2e-3 rank=16 target_modules=q_proj,v_proj' → Hyper field changes (typed as the field's default)."""
    base, changes = Hyper(), {}
    for item in text.split():
        key, _, value = item.partition("=")
        if not hasattr(base, key):
            raise SystemExit(f"--try: Hyper has no field {key!r}")
        current = getattr(base, key)
        changes[key] = (tuple(value.split(",")) if isinstance(current, tuple)
                        else type(current)(float(value)) if isinstance(current, int) else type(current)(value))
    return changes


def train(root: Path, base: Path, name: str, hyper: Hyper, train_file: str, holdout: str,
          threads: int | None) -> dict:
    trained = train_on(root, base, name, hyper, train_file=train_file, holdout_file=holdout, recall_file=train_file,
                       cpu_threads=threads)
    r = trained.report
    return {"run": name, "lr": hyper.lr, "steps": r.step, "recalled": r.recall.recalled,
            "memories": r.recall.memories, "token_accuracy": r.recall.token_accuracy,
            "holdout_loss_before": r.eval.holdout_loss_before, "holdout_loss_after": r.eval.holdout_loss_after,
            "general_loss_before": r.eval.general_loss_before, "general_loss_after": r.eval.general_loss_after,
            "stopped_early": r.stopped_early, "wall_s": trained.wall_s, "cpu_s": trained.cpu_s}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--facts", type=int, default=40)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--lr", type=float, default=None, help="override learning.lr")
    p.add_argument("--steps", type=int, default=None, help="override learning.max_steps")
    p.add_argument("--base", type=Path, default=None, help="a demo base already built")
    p.add_argument("--threads", type=int, default=None, help="torch's CPU threads in the trainer (JobSpec)")
    p.add_argument("--skip-defaults", action="store_true", help="no row at the default settings (a sweep)")
    p.add_argument("--try", dest="tries", action="append", default=[], metavar="'KEY=VALUE ...'",
                   help="one more trained row with these Hyper fields changed (repeatable: a sweep)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="recall-round-") as tmp:
        root = Path(tmp)
        base = demo_base(root, args.base)
        pairs = facts(args.seed, args.facts + 4)
        train_file, holdout = write(root / "train.jsonl", pairs[: args.facts]), write(root / "holdout.jsonl",
                                                                                     pairs[args.facts:])
        hyper = default_hyper()
        changes = {k: v for k, v in (("lr", args.lr), ("max_steps", args.steps)) if v is not None}
        rows = [train(root, base, "base", dataclasses.replace(hyper, lr=1e-8, max_steps=1, warmup_steps=0,
                                                              recall_every=0), train_file, holdout, args.threads)]
        if not args.skip_defaults:
            rows.append(train(root, base, "defaults", dataclasses.replace(hyper, **changes), train_file, holdout,
                              args.threads))
        for n, text in enumerate(args.tries, 1):
            row = train(root, base, f"try{n}", dataclasses.replace(hyper, **parse_try(text)), train_file, holdout,
                        args.threads)
            rows.append({**row, "settings": text})
    print(f"{'RUN':8} {'LR':>8} {'STEPS':>5} {'RECALLED':>9} {'TOKEN ACC':>9} {'HOLDOUT':>15} {'GENERAL':>15} "
          f"{'WALL':>7} {'CPU':>7}")
    for r in rows:
        general = ("-" if r["general_loss_before"] is None else
                   f"{r['general_loss_before']:.3f}→{r['general_loss_after']:.3f}")
        print(f"{r['run']:8} {r['lr']:8.0e} {r['steps']:5d} {r['recalled']:4d}/{r['memories']:<4d} "
              f"{r['token_accuracy']:9.3f} {r['holdout_loss_before']:7.3f}→{r['holdout_loss_after']:<7.3f} "
              f"{general:>15} {r['wall_s']:6.1f}s {r['cpu_s']:6.1f}s  {r.get('settings', '')}")
    if args.json:
        print(json.dumps({"facts": args.facts, "seed": args.seed, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
