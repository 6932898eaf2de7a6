"""Forgetting of an old task after learning a new one: EWC + replay against plain LoRA, with the real trainer.

Task A and task B are two sets of --facts short facts in chat form (A: "Who is Ines?" → "Ines is your cousin;
they live in Oslo and play the harp."; B: "Where is the tea tin?" → "The tea tin is under the stairs, since
May."), drawn from fixed word lists with --seed. On the default demo Llama (`build_demo_model`: 128 wide, 4
layers, pre-trained), with `python -m memwarden.training` for every run (LoRA r 8, alpha 16 on all seven linear
projections, lr --lr, micro_batch 4 × grad_accum 2, seed 42, fisher_samples = all of the run's training pairs):
  A                    train task A from the base; the adapter and its Fisher (fisher.safetensors) are kept;
  B, plain LoRA (a)    from A's adapter (init_adapter), B's pairs only, EWC off (λ 0), no prior Fisher;
  B, EWC + replay (b)  from A's adapter, B's pairs plus --replay of A's pairs in the train file, EWC with λ --lam
                       and A's Fisher as the prior;
and, unless --no-ablations, the two halves of (b) alone: replay only (λ 0) and EWC only (no replay). Every B run
has the same --steps-b steps (the same compute; replayed pairs take part of it).
Losses (token-mean cross-entropy over assistant tokens, the trainer's own definition, dropout off) of every
final adapter are measured afterwards in one process: task A (all of A's pairs, and the A pairs that were NOT
replayed), and task B. Forgetting = task-A loss after B − task-A loss before B (A's adapter). Goal: forgetting of
(b) ≤ 0.5 × forgetting of (a), with (b)'s task-B loss at most 5 % above (a)'s.

--tune chooses λ and the replay share: the same runs on tuning tasks drawn with --seed + 1000 (other names,
objects and answers) for each replay count of --grid-replay × each λ of --grid, and picks the pair with the least
task-A forgetting whose task-B loss is within 5 % of plain LoRA's; the test runs then use it. The defaults
(--replay 2, --lam 30) are what `--tune` chose (see BENCHMARKS.md); `--tune --tune-only` prints just that table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, kill_process, parser, ratio, table

GOAL_RATIO = 0.5  # forgetting (b) ÷ forgetting (a)
GOAL_NEW_TASK = 1.05  # task-B loss (b) ÷ task-B loss (a)
RUN_TIMEOUT = 240.0
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

NAMES = ("Mira", "Tomas", "Ines", "Oskar", "Lena", "Ravi", "Noor", "Felix", "Ada", "Jonas", "Yara", "Milo", "Sofia",
         "Emil", "Hana", "Leo", "Clara", "Ivan", "Zoe", "Nico", "Alma", "Otto", "Rosa", "Karl", "Vera", "Hugo")
RELATIONS = ("sister", "brother", "cousin", "neighbour", "colleague", "friend", "aunt", "uncle")
CITIES = ("Lisbon", "Oslo", "Porto", "Vienna", "Dublin", "Krakow", "Lyon", "Turin", "Ghent", "Bergen")
INSTRUMENTS = ("cello", "violin", "piano", "drums", "flute", "guitar", "harp", "trumpet")
OBJECTS = ("red key", "blue umbrella", "old camera", "spare charger", "garden gloves", "winter coat", "green lamp",
           "tax papers", "bike pump", "sewing kit", "tea tin", "silver pen", "map of Crete", "toolbox", "chess set",
           "photo album", "yoga mat", "rain boots", "first aid kit", "kite", "radio", "scarf", "torch", "ladder")
PLACES = ("in the top drawer", "behind the door", "under the stairs", "on the shelf by the window", "in the car",
          "in the attic", "in the blue box", "next to the fridge", "in the basement", "under the bed")
SINCE = ("Monday", "Friday", "March", "May", "last week")

Pair = tuple[str, str]


def tasks(seed: int, n: int) -> tuple[list[Pair], list[Pair]]:
    rng = random.Random(seed)
    a = [(f"Who is {x}?", f"{x} is your {rng.choice(RELATIONS)}; they live in {rng.choice(CITIES)} and play the "
          f"{rng.choice(INSTRUMENTS)}.") for x in rng.sample(NAMES, n)]
    b = [(f"Where is the {o}?", f"The {o} is {rng.choice(PLACES)}, since {rng.choice(SINCE)}.")
         for o in rng.sample(OBJECTS, n)]
    return a, b


def write_pairs(path: Path, pairs: list[Pair]) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return path


# ---------------------------------------------------------------------------------------------------- children

def evaluate(request_path: str) -> int:
    """Losses of each adapter (None: the base) on each file, the trainer's way; one JSON object on stdout."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from memwarden.training.data import collate, load_split
    from memwarden.training.evaluation import token_loss_sum
    from memwarden.training.model import load_tokenizer

    req = json.loads(Path(request_path).read_text())
    tok = load_tokenizer(req["base"])
    splits = {name: load_split(name, path, tok, req["max_seq_len"]) for name, path in req["files"].items()}
    out: dict[str, dict[str, float]] = {}
    for label, adapter in req["adapters"].items():
        model = AutoModelForCausalLM.from_pretrained(req["base"], dtype=torch.float32, local_files_only=True)
        if adapter:
            model = PeftModel.from_pretrained(model, adapter)
        model.eval()
        out[label] = {}
        with torch.no_grad():
            for name, split in splits.items():
                total, targets = 0.0, 0
                for i in range(0, len(split.examples), 8):
                    chunk = split.examples[i : i + 8]
                    batch = collate(chunk, tok.pad_token_id)
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    total += float(token_loss_sum(logits, batch["labels"]))
                    targets += sum(e.n_targets for e in chunk)
                out[label][name] = total / targets
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------------------- parent

def child(argv: list[str]) -> str:
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        kill_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {err[-2000:]}")
    return out


class Experiment:
    """One pair of tasks in `root`: train A, then B in several variants from A's adapter; evaluate."""

    def __init__(self, root: Path, base: Path, seed: int, args: Any, replays: list[int]):
        """`replays`: the numbers of A's pairs that B runs may replay (the first r of A's pairs)."""
        self.root, self.base, self.args = root, base, args
        root.mkdir(parents=True)
        self.a, self.b = tasks(seed, args.facts)
        self.files = {"a": write_pairs(root / "a.jsonl", self.a), "b": write_pairs(root / "b.jsonl", self.b)}
        for r in replays:
            self.files[f"b_replay{r}"] = write_pairs(root / f"b_replay{r}.jsonl", self.b + self.a[:r])
            self.files[f"a_not_replayed{r}"] = write_pairs(root / f"a_not_replayed{r}.jsonl", self.a[r:])
        self.runs: dict[str, dict[str, Any]] = {}

    def train(self, name: str, train: str, holdout: str, steps: int, init: bool = False, lam: float = 0.0,
              prior: bool = False) -> dict[str, Any]:
        from memwarden.learning.jobspec import Ewc, Hyper, JobSpec

        a = self.args
        fisher = self.root / "A" / "final" / "fisher.safetensors"
        spec = JobSpec(
            run_id=name, adapter="bench", base_model=str(self.base), method="lora", output_dir=str(self.root / name),
            train_file=str(self.files[train]), holdout_file=str(self.files[holdout]),
            probe_file=str(self.files["a"]) if init else None,
            init_adapter=str(self.root / "A" / "final") if init else None,
            hyper=Hyper(lr=a.lr, rank=8, alpha=16, dropout=0.05, micro_batch=4, grad_accum=2, max_steps=steps,
                        warmup_steps=3, max_seq_len=128, seed=42, eval_every=0, target_modules=ALL_LINEAR),
            ewc=Ewc(lam=lam, fisher_samples=a.facts, prior_fisher=str(fisher) if prior else None),
            checkpoint_every_steps=0, checkpoint_every_seconds=0.0)
        job = self.root / f"{name}.json"
        spec.write(job)
        started = time.monotonic()
        events = [json.loads(line) for line in child(["-m", "memwarden.training", str(job)]).splitlines()
                  if line.startswith("{")]
        done = next((e for e in events if e["event"] == "done"), None)
        if done is None:
            raise RuntimeError(f"run {name} did not finish: {events[-3:]}")
        start = next(e for e in events if e["event"] == "start")
        steps_ev = [e for e in events if e["event"] == "step"]
        run = {"name": name, "train": train, "lam": lam, "prior_fisher": prior, "seconds": time.monotonic() - started,
               "trainer_eval": done["eval"], "ewc": start["ewc"], "last_loss": steps_ev[-1]["loss"],
               "ewc_penalty_last": steps_ev[-1].get("ewc_penalty"), "final": done["final_dir"]}
        self.runs[name] = run
        return run

    def evaluate(self) -> dict[str, dict[str, float]]:
        request = {"base": str(self.base), "max_seq_len": 128, "files": {k: str(v) for k, v in self.files.items()},
                   "adapters": {"base": None, **{name: run["final"] for name, run in self.runs.items()}}}
        path = self.root / "evaluate.json"
        path.write_text(json.dumps(request))
        return json.loads(child([__file__, "--evaluate", str(path)]).strip().splitlines()[-1])


def variants(args: Any, lam: float, ablations: bool) -> list[tuple[str, str, str, float, bool]]:
    """(key, label, train file, λ, prior fisher) of the B runs."""
    r = args.replay
    out = [("plain", "(a) plain LoRA: λ 0, no replay", "b", 0.0, False),
           ("ewc_replay", f"(b) EWC λ {lam:g} + replay {r}/{args.facts} of A", f"b_replay{r}", lam, True)]
    if ablations:
        out += [("replay_only", f"replay {r}/{args.facts} of A only (λ 0)", f"b_replay{r}", 0.0, False),
                ("ewc_only", f"EWC λ {lam:g} only (no replay)", "b", lam, True)]
    return out


def figures(losses: dict[str, dict[str, float]], key: str, replay: int) -> dict[str, Any]:
    """Task-A loss before (A's adapter) and after B (run `key`), on all of A and on the A pairs not replayed."""
    before, after = losses["A"], losses[key]
    rest = f"a_not_replayed{replay}"
    return {"a_before": before["a"], "a_after": after["a"], "forgetting": after["a"] - before["a"],
            "a_not_replayed_before": before[rest], "a_not_replayed_after": after[rest],
            "forgetting_not_replayed": after[rest] - before[rest], "b_before": before["b"], "b_after": after["b"]}


def relative(f: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """f's forgetting and task-B loss relative to plain LoRA's; plain's forgetting on the same A pairs."""
    return {**f, "forgetting_ratio": ratio(f["forgetting"], plain["forgetting"]),
            "forgetting_not_replayed_ratio": ratio(f["forgetting_not_replayed"], plain["forgetting_not_replayed"]),
            "b_ratio": ratio(f["b_after"], plain["b_after"])}


def tune(args: Any, base: Path, tmp: Path) -> dict[str, Any]:
    exp = Experiment(tmp / "tune", base, args.seed + 1000, args, args.grid_replay)
    exp.train("A", "a", "a", args.steps_a)
    exp.train("plain", "b", "b", args.steps_b, init=True)
    cells = [(r, lam) for r in args.grid_replay for lam in args.grid]
    for r, lam in cells:
        exp.train(f"r{r}-lam{lam:g}", f"b_replay{r}", "b", args.steps_b, init=True, lam=lam, prior=lam > 0)
    losses = exp.evaluate()
    grid = {}
    for r, lam in cells:
        grid[(r, lam)] = relative(figures(losses, f"r{r}-lam{lam:g}", r), figures(losses, "plain", r))
    ok = [c for c in cells if grid[c]["b_ratio"] <= GOAL_NEW_TASK]
    chosen = min(ok, key=lambda c: grid[c]["forgetting"]) if ok else None
    plain = figures(losses, "plain", args.grid_replay[0])
    rows = [["plain LoRA (λ 0, no replay)", fmt(plain["a_after"], 3), fmt(plain["forgetting"], 3), "1.00×", "",
             fmt(plain["b_after"], 3), "1.00×"]]
    for (r, lam), f in grid.items():
        rows.append([f"replay {r}/{args.facts}, λ {lam:g}" + (" ← chosen" if (r, lam) == chosen else ""),
                     fmt(f["a_after"], 3), fmt(f["forgetting"], 3), fmt_ratio(f["forgetting_ratio"]),
                     fmt_ratio(f["forgetting_not_replayed_ratio"]), fmt(f["b_after"], 3), fmt_ratio(f["b_ratio"])])
    text = table([f"tuning tasks (facts seed {args.seed + 1000})", "task-A loss after B", "forgetting", "÷ plain",
                  "÷ plain, A pairs not replayed", "task-B loss after", "÷ plain"], rows)
    text += (f"\n\nTask-A loss before B (A's adapter): {plain['a_before']:.3f}; base model: {losses['base']['a']:.3f}. "
             f"Rule: the least forgetting (all of A) with task-B loss ≤ {GOAL_NEW_TASK:.2f}× plain LoRA's → "
             f"{'none' if chosen is None else f'replay {chosen[0]}, λ {chosen[1]:g}'}. A {args.steps_a} steps, each "
             f"B {args.steps_b} steps, lr {args.lr:g}.")
    return {"text": text, "chosen": chosen, "grid": {f"r{r}-lam{lam:g}": v for (r, lam), v in grid.items()},
            "plain": plain, "runs": exp.runs, "losses": losses}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--lam", type=float, default=30.0, help="EWC λ of run (b) (default 30, chosen by --tune)")
    p.add_argument("--replay", type=int, default=2,
                   help="pairs of task A mixed into (b)'s train file (default 2 of 16, chosen by --tune)")
    p.add_argument("--facts", type=int, default=16, help="facts per task (default 16)")
    p.add_argument("--steps-a", type=int, default=60, help="steps of the task-A run (default 60)")
    p.add_argument("--steps-b", type=int, default=60, help="steps of each task-B run (default 60)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate of every run (default 1e-2)")
    p.add_argument("--seed", type=int, default=2, help="seed of the tasks' facts (default 2; tuning uses +1000)")
    p.add_argument("--no-ablations", action="store_true", help="skip the replay-only and EWC-only runs")
    p.add_argument("--tune", action="store_true", help="choose λ on tuning tasks first (see the docstring)")
    p.add_argument("--tune-only", action="store_true", help="with --tune: stop after the tuning table")
    p.add_argument("--grid", type=float, nargs="+", default=[0, 30, 100, 300],
                   help="λ values tried by --tune (default 0 30 100 300)")
    p.add_argument("--grid-replay", type=int, nargs="+", default=[2, 3, 4],
                   help="replay counts tried by --tune (default 2 3 4)")
    p.add_argument("--evaluate", metavar="REQUEST", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.evaluate:
        return evaluate(args.evaluate)
    exit_cleanly_on_sigterm()
    if not 0 <= args.replay < args.facts:
        p.error("--replay must be in [0, --facts)")

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mw-forget-"))
    try:
        base = tmp / "base"
        child(["-m", "memwarden.training.demo_model", str(base)])
        tuned = tune(args, base, tmp) if args.tune else None
        if tuned and args.tune_only:
            emit("forgetting: choosing λ", tuned["text"], {k: v for k, v in tuned.items() if k != "text"}, args.json)
            return 0
        if tuned and tuned["chosen"] is not None:
            args.replay, args.lam = tuned["chosen"]
        lam = args.lam
        exp = Experiment(tmp / "test", base, args.seed, args, [args.replay])
        exp.train("A", "a", "a", args.steps_a)
        for key, _label, train, lam_v, prior in variants(args, lam, not args.no_ablations):
            exp.train(key, train, "b", args.steps_b, init=True, lam=lam_v, prior=prior)
        losses = exp.evaluate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    plain = figures(losses, "plain", args.replay)
    results = {key: relative(figures(losses, key, args.replay), plain)
               for key, *_ in variants(args, lam, not args.no_ablations)}
    b = results["ewc_replay"]
    met_all = b["forgetting_ratio"] <= GOAL_RATIO and b["b_ratio"] <= GOAL_NEW_TASK
    met_not_replayed = b["forgetting_not_replayed_ratio"] <= GOAL_RATIO and b["b_ratio"] <= GOAL_NEW_TASK

    rows = []
    for key, label, *_ in variants(args, lam, not args.no_ablations):
        f = results[key]
        rows.append([label, fmt(f["a_before"], 3), fmt(f["a_after"], 3), fmt(f["forgetting"], 3),
                     fmt_ratio(f["forgetting_ratio"]) if key != "plain" else "1.00× (baseline)",
                     fmt(f["forgetting_not_replayed"], 3),
                     fmt_ratio(f["forgetting_not_replayed_ratio"]) if key != "plain" else "1.00× (baseline)",
                     fmt(f["b_after"], 3), fmt_ratio(f["b_ratio"]) if key != "plain" else "1.00× (baseline)"])
    text = table(["task B learned from A's adapter", "task-A loss before B", "after B", "forgetting", "÷ (a)",
                  f"forgetting, the {args.facts - args.replay} A pairs not replayed", "÷ (a)", "task-B loss after",
                  "÷ (a)"], rows)
    goal = (f"Goal: forgetting (b) ≤ {GOAL_RATIO:.1f}× (a) with task-B loss ≤ {GOAL_NEW_TASK:.2f}× (a): "
            f"{'met' if met_all else 'NOT met'} on all of task A ({fmt_ratio(b['forgetting_ratio'])} forgetting, "
            f"{fmt_ratio(b['b_ratio'])} task-B loss); {'met' if met_not_replayed else 'NOT met'} on the A pairs not "
            f"replayed ({fmt_ratio(b['forgetting_not_replayed_ratio'])}).")
    base_l = losses["base"]
    if tuned and tuned["chosen"] is not None:
        how = "both chosen by --tune in this run"
    elif (lam, args.replay) == (30.0, 2):
        how = "the defaults: what --tune chose on the tuning tasks"
    else:
        how = "as given"
    text += (f"\n\n{goal} λ {lam:g}, replay {args.replay}/{args.facts} ({how}); replay "
             f"{args.replay} of A's {args.facts} pairs ({args.replay / (args.facts + args.replay):.0%} of (b)'s train "
             f"file). Losses: token-mean cross-entropy over assistant tokens; base model (no adapter): task A "
             f"{base_l['a']:.3f}, task B {base_l['b']:.3f}; A's adapter on task B {plain['b_before']:.3f}. Runs: A "
             f"{args.steps_a} steps, each B {args.steps_b} steps, lr {args.lr:g}, facts seed {args.seed}. The "
             f"trainer's own probe loss (all of A) after B agrees: "
             + ", ".join(f"{k} {exp.runs[k]['trainer_eval']['probe_loss_after']:.3f}" for k in results) + ". "
             f"Total {time.monotonic() - started:.0f} s.")
    if tuned:
        text = tuned["text"] + "\n\n" + text
    emit("forgetting", text, {"goal": {"forgetting_ratio": GOAL_RATIO, "new_task_ratio": GOAL_NEW_TASK},
                              "met_all_of_a": met_all, "met_a_not_replayed": met_not_replayed, "lam": lam,
                              "results": results, "losses": losses, "runs": exp.runs,
                              "tuning": {k: v for k, v in tuned.items() if k != "text"} if tuned else None,
                              "args": {k: v for k, v in vars(args).items() if k not in ("evaluate", "json")}},
         args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
