"""Where a run's CPU goes: the dry run and the run of one kept round, each in a trainer process of its own.

A round's run directory as bench/daemon_rounds.py keeps it (WORK/NAME/roundNN/run: the curated files, dry.json and
job.run.json; a later round's also the version it continues from, --init) is copied to --work with its paths
rewritten there, and each phase is trained as the daemon trains it (`python -m memwarden.training`'s main()), in a
child that adds up the process's CPU time (user + system) spent in each part of the trainer: the imports (torch,
then transformers and peft), the model's build, the data, the evaluations before and after, the training steps, the
early stop's recall checks, the checkpoints, the EWC Fisher and the export; what is left is the interpreter and the
parts between. The children run one after the other.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import cpu_pressure, emit, fmt, machine, parser, table

PHASE_SPECS = (("dry run", "dry.json"), ("run", "job.run.json"))
FILE_KEYS = ("train_file", "holdout_file", "recall_file", "probe_file", "preference_file")


def rewritten(spec: dict[str, Any], src: Path, work: Path, output: str, init: Path | None) -> dict[str, Any]:
    """The spec with its curated files in `work`, its output in work/`output`, and the version it continues from
    (its adapter and Fisher) in `init`."""
    spec = dict(spec, output_dir=str(work / output))
    if spec.get("init_adapter"):
        if init is None:
            raise SystemExit("this run continues a version: --init DIR (the round before's run/final)")
        spec["init_adapter"] = str(init)
        spec["ewc"] = dict(spec["ewc"], prior_fisher=str(init / "fisher.safetensors"))
    for key in FILE_KEYS:
        if spec.get(key) and (src / Path(spec[key]).name).is_file():
            spec[key] = str(work / Path(spec[key]).name)
    return spec


def child(spec_path: str) -> None:
    """Train `spec_path` with the CPU of each part added up; the totals as JSON on stderr's last line."""
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    inside: list[str] = []

    def timed(owner: Any, name: str, part: str) -> None:
        wrapped = getattr(owner, name)

        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            inside.append(part)
            try:
                return wrapped(*args, **kwargs)
            finally:
                inside.pop()
                if not inside:  # a part called within another is that one's (a recall within a check)
                    spent[part] += time.process_time() - started
                calls[part] += 1

        setattr(owner, name, run)

    started = time.process_time()
    import memwarden.training.__main__ as entry
    from memwarden.learning.jobspec import JobSpec

    if hasattr(entry, "leave_out_bitsandbytes"):  # what main() does before its imports, where it does it
        entry.leave_out_bitsandbytes(JobSpec.read(Path(spec_path)).method, sys.modules)
    from memwarden.training import evaluation, recall, trainer

    spent["import torch (the trainer's modules)"] = time.process_time() - started
    started = time.process_time()
    import peft  # noqa: F401 - imported here to be timed: the trainer imports it and transformers' parts
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup  # noqa: F401

    spent["import transformers, peft"] = time.process_time() - started
    timed(trainer, "build", "build the model")
    timed(trainer, "load_split", "read the data")
    timed(trainer, "load_items", "read the data")
    timed(evaluation.Evaluation, "before", "losses before")
    timed(evaluation.Evaluation, "losses", "losses after")
    timed(evaluation.Evaluation, "loss", "holdout loss during training")
    timed(recall.EarlyStop, "reached", "early-stop recall checks")
    timed(recall.EarlyStop, "final_recall", "final recall")
    timed(recall.EarlyStop, "final_probe_recall", "final recall")
    timed(recall.RecallMeter, "measure", "probe recall before")
    timed(trainer.Trainer, "_train_step", "training steps")
    timed(trainer.Trainer, "_checkpoint", "checkpoints")
    timed(trainer, "compute_fisher", "EWC Fisher")
    timed(trainer, "write_final", "export")
    timed(trainer, "check_adapter", "export")
    code = entry.main([spec_path])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"code": code, "cpu_s": usage.ru_utime + usage.ru_stime, "parts": spent, "calls": calls}),
          file=sys.stderr, flush=True)
    os._exit(0)


def measure(spec_file: Path, log: Path) -> dict[str, Any]:
    with log.open("w") as err:
        subprocess.run([sys.executable, __file__, "--child", str(spec_file)], stdout=subprocess.DEVNULL,
                       stderr=err, check=True)
    result = json.loads(log.read_text().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"{spec_file}: the trainer exited {result['code']}; {log}")
    return result


def render(phases: dict[str, dict[str, Any]]) -> str:
    """One row a part, one column a phase, and their sum."""
    parts: list[str] = []
    for result in phases.values():
        parts += [p for p in result["parts"] if p not in parts]
    rows = []
    for part in parts:
        cells = [result["parts"].get(part) for result in phases.values()]
        rows.append([part, *[fmt(c, 2) for c in cells], fmt(sum(c or 0.0 for c in cells), 2)])
    rest = [r["cpu_s"] - sum(r["parts"].values()) for r in phases.values()]
    rows.append(["the rest (interpreter, between the parts)", *[fmt(x, 2) for x in rest], fmt(sum(rest), 2)])
    totals = [r["cpu_s"] for r in phases.values()]
    rows.append(["**total CPU**", *[fmt(t, 2) for t in totals], fmt(sum(totals), 2)])
    return table(["part (CPU s)", *phases, "both"], rows)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    p = parser(__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a round's kept run directory (daemon_rounds.py's roundNN/run)")
    p.add_argument("--work", type=Path, required=True, help="directory for the copies and the trainers' output")
    p.add_argument("--init", type=Path, default=None,
                   help="for a round after the first: the version it continues from (the round before's run/final)")
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    phases: dict[str, dict[str, Any]] = {}
    pressure = [cpu_pressure()]
    for name, spec_name in PHASE_SPECS:
        src = args.run_dir / spec_name
        if not src.is_file():
            continue
        for f in args.run_dir.glob("*.jsonl"):
            shutil.copy(f, args.work / f.name)
        output = "dry" if spec_name == "dry.json" else "out"
        spec_file = args.work / spec_name
        spec_file.write_text(json.dumps(rewritten(json.loads(src.read_text()), args.run_dir, args.work, output,
                                               args.init)))
        phases[name] = measure(spec_file, args.work / f"{output}.log")
        pressure.append(cpu_pressure())
    text = render(phases) + f"\n\nCPU pressure (some avg60) {' → '.join(fmt(x) for x in pressure)}"
    emit("Where a run's CPU goes", text, {"phases": phases, "cpu_pressure": pressure, **machine()}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
