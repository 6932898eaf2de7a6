"""Rounds of memories through the real memwardend: recall of every round so far after each one.

continual_rounds.py runs the daemon's curation, job spec, trainer and gate in one process; this runs the daemon
itself. A memwardend is started on a temporary state directory (learning on, the subprocess executor, the demo
base: the tests' cached build by default, `--base DIR` otherwise; no GPU, no Ollama), every other setting at its
default unless `--config-set SECTION.KEY=VALUE` says otherwise. Each round, as a user would:

  memwardenctl memories import ROUND.jsonl    the round's facts and journal entries, continual_rounds.py's own
                                              (the same --rounds, --only, --facts, --journal and --seed give the
                                              same memories as that bench)
  memwardenctl train start bench              the run, unless the import already crossed learning.
                                              importance_threshold and the daemon started it ("a run is in
                                              progress" then)
  memwardenctl train watch bench --json       until the run ends (bounded by --run-timeout)
  memwardenctl --json train history bench     the gate's verdict and its numbers

then the promoted version in the state directory (state/adapters/bench/vN) is scored by continual_rounds.py's
evaluation child on every round's facts so far and the general probe: the same matrix, average final recall,
BWT, general drift and wall per round as that bench, tabulated by its own code. Wall per round is from the import
to the verdict (the daemon's trigger, lease, dry run, trainer and promotion); CPU per round is the daemon's and
its reaped children's (the dry run's and the trainer's) user + system time, the daemon's own beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import continual_rounds
import psutil
from _common import cpu_pressure, emit, machine, managed, parser

from memwarden.config.schema import LearningConfig
from memwarden.learning.jobspec import GENERAL_PROBE_FILE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.daemon import BIN, DaemonProcess, short_tmpdir
from support.demo_base import demo_base

CONTINUAL = str(Path(__file__).resolve().parent / "continual_rounds.py")
BASE_BUILD_TIMEOUT_S = 3600


def config_value(text: str) -> Any:
    """A TOML scalar as written after `=`: a number, true/false, or else a string (durations, sizes, names)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def sections_of(base: Path, config_set: list[str]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {
        "learning": {"enabled": True, "base_model": str(base), "executor": "subprocess"}}
    for item in config_set:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--config-set {item!r}: expected SECTION.KEY=VALUE")
        sections.setdefault(section, {})[name] = config_value(value)
    return sections


def ctl(d: DaemonProcess, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "memwardenctl"), "--socket", str(d.socket_path), *args], capture_output=True,
                          text=True, timeout=timeout)


def daemon_cpu(pid: int) -> tuple[float, float]:
    """(the daemon's own CPU seconds, with its reaped children's: the dry run's and the trainer's)"""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system, t.user + t.system + t.children_user + t.children_system


def import_memories(d: DaemonProcess, path: Path, mems: list[dict]) -> None:
    """The round's memories in the documented import format: the generator's bookkeeping fields left out (the
    daemon numbers memories itself, and an unrouted memory feeds the adapter named after its profile)."""
    path.write_text("".join(json.dumps({k: v for k, v in m.items() if k not in ("id", "adapter")}) + "\n"
                            for m in mems))
    out = ctl(d, "memories", "import", str(path))
    if out.returncode != 0:
        raise SystemExit(f"memories import {path}: {out.stdout}{out.stderr}")


def run_round(d: DaemonProcess, timeout: float) -> dict[str, Any]:
    """Start the adapter's run (or follow the one the import triggered) and return it once it has ended."""
    started = ctl(d, "train", "start", continual_rounds.ADAPTER)
    if started.returncode != 0 and "in progress" not in started.stderr + started.stdout:
        raise SystemExit(f"train start {continual_rounds.ADAPTER}: {started.stdout}{started.stderr}")
    try:
        watched = ctl(d, "train", "watch", continual_rounds.ADAPTER, "--json", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the run did not end within --run-timeout {timeout:g} s") from None
    final = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
    if not final or not final[-1].get("final"):
        raise SystemExit(f"train watch exited {watched.returncode} before the run ended: {watched.stderr[-2000:]}")
    history = ctl(d, "--json", "train", "history", continual_rounds.ADAPTER, "--limit", "5")
    if history.returncode != 0:
        raise SystemExit(f"train history: {history.stderr}")
    [run] = [r for r in json.loads(history.stdout) if r["id"] == final[-1]["run"]]
    return run


def score(work: Path, base: Path, adapter: Path | None, recall_files: list[str], threads: int,
          decoding: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """continual_rounds.py's evaluation of `adapter` (None: the base alone): recall per round, general loss."""
    request = work / "evaluate.json"
    request.write_text(json.dumps({"base": str(base), "adapter": str(adapter) if adapter else None,
                                   "recall_files": recall_files, "general": str(base / GENERAL_PROBE_FILE),
                                   "threads": threads, "max_seq_len": decoding["max_seq_len"],
                                   "max_new_tokens": decoding["recall_max_new_tokens"]}))
    stdout, wall, _ = continual_rounds.run_child([CONTINUAL, "--evaluate", str(request)])
    return continual_rounds.json_out(stdout), wall


def row_of(r: int, run: dict[str, Any], ev: dict[str, Any], wall: float, cpu: tuple[float, float],
           eval_wall: float) -> dict[str, Any]:
    """One round as continual_rounds.py records it, with the run's own figures from `train history`."""
    e = run.get("eval") or {}
    return {"round": r, "run": run["id"], "trigger": run["trigger"], "promoted": run["state"] == "promoted",
            "code": run["state"], "reason": run.get("reason") or run.get("error"), "steps": e.get("step"),
            "stopped_early": e.get("stopped_early"), "train_recall": e.get("recall"),
            "train_recalled": f"{e.get('recall_recalled')}/{e.get('recall_memories')}",
            "train_token_accuracy": e.get("recall_token_accuracy"),
            "probe": f"{e.get('probe_recall_before_recalled')}→{e.get('probe_recall_after_recalled')}"
                     f"/{e.get('probe_recall_before_memories')}",
            "run_general_loss": [e.get("general_loss_before"), e.get("general_loss_after")],
            "general_loss": ev["general_loss"], "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu[1], 1),
            "daemon_own_cpu_s": round(cpu[0], 1),
            "eval_wall_s": round(eval_wall, 1), "cpu_pressure": cpu_pressure()}


def run_rounds(d: DaemonProcess, base: Path, work: Path, all_rounds: list[list[dict]], threads: int,
               timeout: float, decoding: dict[str, Any]) -> dict[str, Any]:
    recall_files: list[str] = []
    promoted: Path | None = None
    rows, matrix = [], []
    for r, mems in enumerate(all_rounds, 1):
        out = work / f"round{r:02d}"
        out.mkdir(parents=True)
        recall_files.append(str(continual_rounds.fact_recall_file(out / "facts.jsonl", mems)))
        started, cpu_at_import = time.monotonic(), daemon_cpu(d.pid)
        import_memories(d, out / "memories.jsonl", mems)
        run = run_round(d, timeout)
        wall, cpu_now = time.monotonic() - started, daemon_cpu(d.pid)
        cpu = (cpu_now[0] - cpu_at_import[0], cpu_now[1] - cpu_at_import[1])
        # the daemon's state directory goes with it: its run (curated sets, job spec, trainer log, eval) stays here
        shutil.copytree(d.workdir / "state" / "runs" / run["id"], out / "run",
                        ignore=shutil.ignore_patterns("checkpoints"))
        if run["state"] == "promoted":
            promoted = d.workdir / "state" / "adapters" / continual_rounds.ADAPTER / f"v{run['version']}"
        ev, eval_wall = score(out, base, promoted, recall_files, threads, decoding)
        matrix.append([x["recalled"] / x["memories"] for x in ev["recall"]])
        rows.append(row_of(r, run, ev, wall, cpu, eval_wall))
        print(f"round {r}: {run['state']} ({rows[-1]['reason']}); {rows[-1]['steps']} steps; recall by round "
              f"{' '.join(f'{x:.2f}' for x in matrix[-1])}; general {ev['general_loss']:.4f}; "
              f"{wall:.0f} s wall {cpu[1]:.1f} s CPU ({cpu[0]:.1f} s the daemon's own), eval {eval_wall:.0f} s",
              flush=True)
    return {"matrix": matrix, "rounds": rows}


def run_daemon(args: argparse.Namespace, base: Path) -> None:
    """One memwardend through the rounds; its result appended to --out."""
    sections = sections_of(base, args.config_set)
    defaults = LearningConfig()
    decoding = {k: sections["learning"].get(k, getattr(defaults, k)) for k in ("max_seq_len", "recall_max_new_tokens")}
    d = DaemonProcess(sections, workdir=short_tmpdir("mwrounds"))
    for key in ("sample_interval", "log_level"):  # the daemon's own, not the tests' fast sampling and debug log
        d.sections["daemon"].pop(key)
    d.write_config(d.sections)
    started = {"name": args.name, "date_utc": machine()["date_utc"], "commit": machine()["commit"],
               "cpu_pressure_start": cpu_pressure(), "config_set": args.config_set, "base": str(base)}
    all_rounds = continual_rounds.rounds_of_memories(args.seed, args.rounds, args.facts, args.journal)[: args.only]
    with managed(d):
        res = run_rounds(d, base, args.work / args.name, all_rounds, args.threads, args.run_timeout, decoding)
    with args.out.open("a") as fh:
        fh.write(json.dumps({"method": {"name": args.name}, **res, **started, "facts": args.facts,
                             "journal": args.journal, "seed": args.seed, "of_rounds": args.rounds,
                             "cpu_pressure_end": cpu_pressure()}) + "\n")


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=None,
                   help="a demo base (memwardenctl model init-demo DIR); default: the tests' cached build")
    p.add_argument("--pretrain-steps", type=int, default=150,
                   help="without --base: the tests' cached base of this many pre-training steps (tests/conftest.py's "
                        "150; built if missing)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", type=int, default=None,
                   help="run only the first N of the --rounds rounds (continual_rounds.py --only: the same memories)")
    p.add_argument("--facts", type=int, default=40)
    p.add_argument("--journal", type=int, default=4)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--config-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a daemon setting instead of its default (repeatable), e.g. learning.general_epsilon=10")
    p.add_argument("--name", default="daemon", help="the row's name in the table")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads in the evaluation child")
    p.add_argument("--run-timeout", type=float, default=3600, help="seconds a round's run may take")
    p.add_argument("--work", type=Path, required=True, help="directory for the rounds' files (kept)")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per run of this bench, appended")
    p.add_argument("--table", action="store_true", help="only tabulate what --out holds")
    args = p.parse_args()
    base = args.base or demo_base(args.pretrain_steps, BASE_BUILD_TIMEOUT_S)
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.table:
        run_daemon(args, base)
    results = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    base_loss = continual_rounds.base_general(base, args.work, args.threads)
    text = continual_rounds.render(results, base_loss) + f"\n\nbase general-probe loss {base_loss:.4f}"
    summaries = [continual_rounds.summary(r, base_loss) for r in results]
    emit("Rounds through memwardend", text, {"base_general_loss": base_loss, "summaries": summaries}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
