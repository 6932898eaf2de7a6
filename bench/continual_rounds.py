"""Ten rounds of memories for one adapter: how much of every earlier round is still recalled, method by method.

Each round brings --facts new distinct personal facts ("What do you remember about my aunt Rosa?" → "Your aunt
Rosa lives in Graz and keeps bees.", a (relation, name) never used before, seed --seed) and --journal journal
entries, all of one profile feeding one adapter. A round is what the daemon does with them, minus its process
(socket, lease and dry run): its curation (learning/curator.py as learning/preparation.py calls it: the
unconsolidated memories new, the consolidated ones the replay and probe sources), a JobSpec as preparation.py
builds it (continuing from the promoted version and its Fisher), the trainer as the supervisor runs it, and the
gate (learning/promotion.py). A promoted round's memories become consolidated; a rejected round's are trained
again with the next round's, from the last promoted version, as the daemon would. Settings: the schema's
learning.* defaults except the method under comparison:

  plain        no replay, EWC off (λ 0), no general rehearsal
  replay       the schema's replay (replay_fraction, replay_all) and general rehearsal, λ 0
  ewc          no replay, the schema's λ, no general rehearsal
  ewc_replay   the schema's defaults
  stack        one adapter per round, concatenated: each round trains a fresh LoRA on the base with the promoted
               adapter merged in (so the earlier rounds are frozen), and the promoted adapter is the
               concatenation of the earlier one and the new one (peft add_weighted_adapter "cat": B1A1 + B2A2
               exactly, one adapter of rank 16 × rounds); replay's share, λ 0
and NAME:replay=R,lam=L[,all=1][,general=G][,wait=0] for a sweep row: all=1 replays every earlier memory
(learning.replay_all), general=G mixes G of the base's general_rehearsal.jsonl into each run (learning.
general_rehearsal_fraction), wait=0 stops training without waiting for the earlier rounds' probe to be back
within the gate's forgetting_epsilon.

After each round one evaluation process loads the base and the promoted adapter and decodes greedily (the
trainer's RecallMeter and recall_score) every fact of every round so far in its first trained wording: row r of
the matrix R[r][i] is the share of round i's facts recalled after round r. Reported per method: the matrix,
average final recall (mean of the last row), backward transfer BWT (mean over i < last of R[last][i] − R[i][i]),
the general-probe loss of the base's general_probe.jsonl against the base's own, and wall and CPU seconds per
round (trainer, and evaluation apart). Results are appended per method as JSON lines to --out, so that methods
can be run one after another and tabulated together (--table); --only N runs the first N rounds of the same
memories, whose figures the table sets beside the longer runs' after N rounds.

--promote-always promotes every round and still records the gate's verdict, so that methods the gate would stall
can be told apart by what they keep; --general-epsilon opens the general-probe check for a base that any round
moves by more than learning.general_epsilon.
"""

from __future__ import annotations

import dataclasses
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _rounds_children
from _common import cpu_pressure, emit, fmt, machine, parser, table
from recall_round import CITIES, HOBBIES, NAMES, RELATIONS

from memwarden.config.schema import LearningConfig
from memwarden.learning import curator
from memwarden.learning.eval_report import EvalReport
from memwarden.learning.jobspec import EXIT_DONE, GENERAL_PROBE_FILE, GENERAL_REHEARSAL_FILE, Ewc, JobSpec
from memwarden.learning.preparation import hyper_of, mix_general, read_general, step_budget
from memwarden.learning.promotion import Gate, judge

DAY0 = 1_767_225_600.0  # 2026-01-01
PLACES = ("old mill", "harbour", "market", "library", "north beach", "allotment", "bakery", "station")
EVENTS = ("the heron was back", "it rained all afternoon", "we found a lost glove", "the bread was still warm",
          "a brass band played", "the tide was out", "we argued about the map", "a dog followed us home")
ADAPTER = "bench"


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    replay: float
    lam: float
    stack: bool = False
    replay_all: bool = False  # learning.replay_all
    general: float = 0.0  # learning.general_rehearsal_fraction
    wait_probe: bool = True  # the early stop waits for the earlier rounds' probe (hyper.forgetting_epsilon)


def methods(text: str, cfg: LearningConfig) -> Method:
    """'plain' | 'replay' | 'ewc' | 'ewc_replay' | 'stack' | 'NAME:replay=R,lam=L[,stack=1,all=1,general=G,wait=0]';
    the named ones with replay take learning.replay_all and learning.general_rehearsal_fraction as the schema has
    them."""
    now = {"replay_all": cfg.replay_all, "general": cfg.general_rehearsal_fraction}
    named = {"plain": Method("plain", 0.0, 0.0), "replay": Method("replay", cfg.replay_fraction, 0.0, **now),
             "ewc": Method("ewc", 0.0, cfg.ewc_lambda), "ewc_replay": Method("ewc_replay", cfg.replay_fraction,
                                                                           cfg.ewc_lambda, **now),
             "stack": Method("stack", cfg.replay_fraction, 0.0, stack=True)}
    if text in named:
        return named[text]
    name, _, spec = text.partition(":")
    fields = dict(kv.split("=") for kv in spec.split(",") if kv)
    return Method(name, float(fields.get("replay", 0)), float(fields.get("lam", 0)), fields.get("stack") == "1",
                  fields.get("all") == "1", float(fields.get("general", 0)), fields.get("wait", "1") == "1")


# ---------------------------------------------------------------------------------------------------- memories

def rounds_of_memories(seed: int, rounds: int, facts: int, journal: int) -> list[list[dict]]:
    rng = random.Random(seed)
    keys = rng.sample([(rel, name) for rel in RELATIONS for name in NAMES], rounds * facts)
    out, mid = [], 0
    for r in range(rounds):
        day = DAY0 + 7 * 86400 * r
        mems = []
        for rel, name in keys[r * facts : (r + 1) * facts]:
            mid += 1
            mems.append({"id": mid, "profile": ADAPTER, "kind": "conversation", "importance": 5, "adapter": ADAPTER,
                         "created_at": day + mid, "content": f"What do you remember about my {rel} {name}?",
                         "response": f"Your {rel} {name} lives in {rng.choice(CITIES)} and {rng.choice(HOBBIES)}."})
        for j in range(journal):
            mid += 1
            mems.append({"id": mid, "profile": ADAPTER, "kind": "journal", "importance": 5, "adapter": ADAPTER,
                         "created_at": day + 86400 * (j + 1), "response": None,
                         "content": f"Walked to the {rng.choice(PLACES)} with {rng.choice(NAMES)}; "
                                    f"{rng.choice(EVENTS)}."})
        out.append(mems)
    return out


def fact_recall_file(path: Path, mems: list[dict]) -> Path:
    """The round's facts in their first trained wording (an exchange's own user turn), tagged by memory."""
    pairs = [curator.pairs_of(m, dual=False)[0] for m in mems if m["kind"] == "conversation"]
    curator.write_jsonl(path, pairs, tagged=True)
    return path


# ---------------------------------------------------------------------------------------------------- parent

def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(argv: list[str]) -> tuple[str, float, float]:
    started, cpu = time.monotonic(), child_cpu()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    if proc.returncode != EXIT_DONE:
        raise SystemExit(f"{argv[:2]} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return proc.stdout, time.monotonic() - started, child_cpu() - cpu


def json_out(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_method(method: Method, base: Path, root: Path, all_rounds: list[list[dict]], threads: int,
               max_steps: int | None, gate_overrides: dict[str, float], promote_always: bool) -> dict:
    cfg = LearningConfig()
    gate = dataclasses.replace(Gate.of(cfg), **gate_overrides)
    hyper = hyper_of(cfg, forgetting_epsilon=gate.forgetting_epsilon if method.wait_probe else 1.0)
    rehearsal = base / GENERAL_REHEARSAL_FILE
    general_lines = read_general(rehearsal) if method.general > 0 and rehearsal.is_file() else []
    script = str(Path(__file__).resolve())
    general = base / GENERAL_PROBE_FILE
    pending: list[dict] = []
    consolidated: list[dict] = []
    promoted: Path | None = None  # the version the next round continues from (stack: the concatenation)
    train_base = base  # stack: the base with the promoted adapter merged in
    recall_files: list[str] = []
    rows, matrix = [], []
    for r, mems in enumerate(all_rounds, 1):
        out = root / method.name / f"round{r:02d}"
        out.mkdir(parents=True)
        pending += mems
        recall_files.append(str(fact_recall_file(out / "facts.jsonl", mems)))
        cur = curator.curate(pending, consolidated, dual=cfg.dual, max_samples=cfg.max_samples,
                             holdout_fraction=cfg.holdout_fraction, replay_fraction=method.replay,
                             replay_all=method.replay_all, seed=cfg.seed)
        mixed = mix_general(cfg, cur.train, general_lines, method.general)
        curator.write_jsonl(out / "train.jsonl", mixed.lines)
        steps = step_budget(cfg, mixed.pairs) if max_steps is None else max_steps
        curator.write_jsonl(out / "holdout.jsonl", cur.holdout or cur.train[:1])
        curator.write_jsonl(out / "recall.jsonl", cur.recall, tagged=True)
        if cur.probe:
            curator.write_jsonl(out / "probe.jsonl", cur.probe)
        fisher = promoted / "fisher.safetensors" if promoted is not None and not method.stack else None
        spec = JobSpec(
            run_id=f"{method.name}-{r}", adapter=ADAPTER, base_model=str(train_base), method="lora",
            output_dir=str(out / "run"), train_file=str(out / "train.jsonl"),
            holdout_file=str(out / "holdout.jsonl"), probe_file=str(out / "probe.jsonl") if cur.probe else None,
            recall_file=str(out / "recall.jsonl"), general_file=str(general),
            init_adapter=str(promoted) if promoted is not None and not method.stack else None,
            hyper=dataclasses.replace(hyper, max_steps=steps, general_per_pass=mixed.per_pass),
            ewc=Ewc(lam=method.lam, prior_fisher=str(fisher) if fisher and fisher.exists() else None),
            cpu_threads=threads, checkpoint_every_steps=100_000, checkpoint_every_seconds=1e9)
        spec.write(out / "job.json")
        _, train_wall, train_cpu = run_child(["-m", "memwarden.training", str(out / "job.json")])
        report = EvalReport.read(out / "run")
        verdict = judge(report.judged(), gate)
        stack_wall = stack_cpu = 0.0
        if verdict.promote or promote_always:
            done = set(cur.consolidate_ids)
            consolidated += [m for m in pending if m["id"] in done]
            pending = [m for m in pending if m["id"] not in done]
            if method.stack:
                request = out / "stack.json"
                request.write_text(json.dumps({"base": str(base), "previous": str(promoted) if promoted else None,
                                               "new": report.final_dir, "out": str(out / "stacked"),
                                               "merged": str(out / "merged")}))
                stdout, stack_wall, stack_cpu = run_child([script, "--stack", str(request)])
                if json_out(stdout)["max_abs_diff"] > 1e-3:
                    raise SystemExit(f"round {r}: the concatenated adapter and the merged base disagree: {stdout}")
                promoted, train_base = out / "stacked", out / "merged"
            else:
                promoted = Path(report.final_dir)
        request = out / "evaluate.json"
        request.write_text(json.dumps({"base": str(base), "adapter": str(promoted) if promoted else None,
                                       "recall_files": recall_files, "general": str(general), "threads": threads,
                                       "max_seq_len": cfg.max_seq_len,
                                       "max_new_tokens": cfg.recall_max_new_tokens}))
        stdout, eval_wall, eval_cpu = run_child([script, "--evaluate", str(request)])
        ev = json_out(stdout)
        matrix.append([x["recalled"] / x["memories"] for x in ev["recall"]])
        rows.append({"round": r, "promoted": verdict.promote or promote_always, "code": verdict.code,
                     "reason": verdict.reason,
                     "steps": report.step, "train_recall": verdict.recall, "trained_pairs": mixed.pairs,
                     "replayed": len(cur.replay_ids), "general_rehearsed": mixed.pairs - len(cur.train),
                     "forgetting": verdict.forgetting, "general_loss": ev["general_loss"],
                     "train_wall_s": round(train_wall + stack_wall, 1), "train_cpu_s": round(train_cpu + stack_cpu, 1),
                     "eval_wall_s": round(eval_wall, 1), "eval_cpu_s": round(eval_cpu, 1),
                     "cpu_pressure": cpu_pressure()})
        print(f"{method.name} round {r}: {verdict.code} ({verdict.reason}); recall by round "
              f"{' '.join(f'{x:.2f}' for x in matrix[-1])}; general {ev['general_loss']:.4f}; {report.step} steps, "
              f"{mixed.pairs} pairs ({len(cur.replay_ids)} replayed, {rows[-1]['general_rehearsed']} general); train "
              f"{train_wall:.0f} s wall {train_cpu:.0f} s CPU, eval {eval_wall:.0f} s", flush=True)
        shutil.rmtree(out / "run" / "checkpoints", ignore_errors=True)
    return {"method": dataclasses.asdict(method), "matrix": matrix, "rounds": rows}


def base_general(base: Path, root: Path, threads: int) -> float:
    request = root / "base-evaluate.json"
    cfg = LearningConfig()
    request.write_text(json.dumps({"base": str(base), "adapter": None, "recall_files": [],
                                   "general": str(base / GENERAL_PROBE_FILE), "threads": threads,
                                   "max_seq_len": cfg.max_seq_len, "max_new_tokens": cfg.recall_max_new_tokens}))
    stdout, _, _ = run_child([str(Path(__file__).resolve()), "--evaluate", str(request)])
    return json_out(stdout)["general_loss"]


def summary(result: dict, base_loss: float, upto: int | None = None) -> dict[str, Any]:
    """The figures after `upto` rounds (default: all that ran): a shorter run's rounds are a prefix of a longer's."""
    m, rows = result["matrix"][:upto], result["rounds"][:upto]
    last, n = m[-1], len(m)
    bwt = sum(last[i] - m[i][i] for i in range(n - 1)) / (n - 1) if n > 1 else None
    return {"method": result["method"]["name"], "rounds": n, "avg_final_recall": sum(last) / len(last), "bwt": bwt,
            "general_drift": rows[-1]["general_loss"] / base_loss - 1,
            "gate_passed": sum(r["code"] == "promoted" for r in rows),
            "train_wall_per_round": sum(r["train_wall_s"] for r in rows) / n,
            "train_cpu_per_round": sum(r["train_cpu_s"] for r in rows) / n,
            "eval_wall_per_round": sum(r["eval_wall_s"] for r in rows) / n}


def render(results: list[dict], base_loss: float) -> str:
    out = []
    for res in results:
        m = res["matrix"]
        head = ["after round"] + [f"R{i + 1}" for i in range(len(m))] + ["gate"]
        out.append(f"{res['method']['name']}: recall of each round's facts (rows: after round r)\n")
        out.append(table(head, [[r + 1] + [f"{x:.2f}" if i <= r else "" for i, x in enumerate(row + [0] * (
            len(m) - len(row)))] + [res["rounds"][r]["code"]] for r, row in enumerate(m)]))
        out.append("")
    sums = [summary(r, base_loss, upto) for upto in sorted({len(r["matrix"]) for r in results}) for r in results
            if len(r["matrix"]) >= upto]
    out.append(table(["method", "rounds", "passed the gate", "avg final recall", "BWT", "general drift",
                      "train wall/round", "train CPU/round", "eval wall/round"],
                     [[s["method"], s["rounds"], s["gate_passed"], f"{s['avg_final_recall']:.3f}",
                       fmt(s["bwt"], 3), f"{s['general_drift']:+.1%}", f"{s['train_wall_per_round']:.1f} s",
                       f"{s['train_cpu_per_round']:.1f} s", f"{s['eval_wall_per_round']:.1f} s"] for s in sums]))
    return "\n".join(out)


def main() -> int:
    if sys.argv[1:2] == ["--evaluate"]:
        return _rounds_children.evaluate(sys.argv[2])
    if sys.argv[1:2] == ["--stack"]:
        return _rounds_children.stack(sys.argv[2])
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="a demo base (memwardenctl model init-demo)")
    p.add_argument("--method", action="append", default=[],
                   help="plain | replay | ewc | ewc_replay | stack | NAME:replay=R,lam=L (repeatable)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--only", type=int, default=None,
                   help="run only the first N of the --rounds rounds (the same memories as the full run)")
    p.add_argument("--facts", type=int, default=40)
    p.add_argument("--journal", type=int, default=4)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--steps", type=int, default=None,
                   help="train this many steps at most, not the daemon's step budget (a quick try)")
    p.add_argument("--general-epsilon", type=float, default=None,
                   help="override learning.general_epsilon in the gate (a base whose general probe any round moves)")
    p.add_argument("--forgetting-epsilon", type=float, default=None,
                   help="override learning.forgetting_epsilon in the gate")
    p.add_argument("--promote-always", action="store_true",
                   help="promote every round whatever the gate says (its verdict is still recorded)")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads in every child")
    p.add_argument("--work", type=Path, required=True, help="directory for the rounds' files (kept)")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per method, appended")
    p.add_argument("--table", action="store_true", help="only tabulate what --out holds")
    args = p.parse_args()
    cfg = LearningConfig()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.table:
        all_rounds = rounds_of_memories(args.seed, args.rounds, args.facts, args.journal)[: args.only]
        overrides = {k: v for k, v in (("general_epsilon", args.general_epsilon),
                                       ("forgetting_epsilon", args.forgetting_epsilon)) if v is not None}
        for text in args.method:
            method = methods(text, cfg)
            started = {"date_utc": machine()["date_utc"], "commit": machine()["commit"],
                       "cpu_pressure_start": cpu_pressure()}
            res = run_method(method, args.base, args.work, all_rounds, args.threads, args.steps,
                             overrides, args.promote_always)
            with args.out.open("a") as fh:
                fh.write(json.dumps({**res, **started, "facts": args.facts, "journal": args.journal,
                                     "seed": args.seed, "general_epsilon": args.general_epsilon,
                                     "forgetting_epsilon": args.forgetting_epsilon,
                                     "promote_always": args.promote_always,
                                     "cpu_pressure_end": cpu_pressure()}) + "\n")
    results = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    base_loss = base_general(args.base, args.work, args.threads)
    emit("Ten rounds of memories", render(results, base_loss) + f"\n\nbase general-probe loss {base_loss:.4f}",
         {"base_general_loss": base_loss, "summaries": [summary(r, base_loss) for r in results]}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
