"""Preemption latency: `lease.preempt` on a training lease → the lease released, against one training step.

The real memwardend with the sim GPU (12 GiB) and learning enabled on the default demo Llama (`memwardenctl model
init-demo`), configured as tests/integration/test_learning_cycle.py does (LoRA r 4, lr 3e-3, micro_batch 2 ×
grad_accum 1, max_seq_len 64, checkpoint every 4 steps, lease 2 GiB, sample_interval 300ms) but with --max-steps
steps and no dry run, so that the run never ends by itself. --hidden/--layers build a larger demo model instead,
and --micro-batch/--grad-accum/--max-seq-len/--checkpoint-steps change the step. Memories past the threshold are
imported; the run starts under a preemptible lease.
Then --reps times:
  wait until the run trains under a new lease (a fresh trainer: the first rep starts the run, each later one
  resumes it from its checkpoint) and has reported --warm steps; let it train --window seconds untouched (no
  polling, which would take CPU from the trainer); then call lease.preempt on the training lease and poll
  lease.list every --poll seconds until the lease is gone from the active ones.
Latency = lease.preempt sent → first lease.list without the lease. From the daemon's JSON log, the parts:
preempt call → SIGTERM sent (the supervisor's "lease preempted; asking the trainer…"), SIGTERM → the trainer's
"preempted" event (its own timestamp `t`: the trainer's timing), → "trainer exited" (process exit and reap),
→ "lease released". Baseline, same run: the training step, timed from the trainer's checkpoint events in each
window (its own timestamps; consecutive checkpoints k and k + n give one mean step of the n, its checkpoint
write included), median over the blocks. Goal: latency within one step.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _arbitration import wait_until
from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, managed, parser, ratio, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.daemon import BIN, DaemonProcess, short_tmpdir
from support.memories import FACTS
from support.ollama_double.manager import sim_gpu

GiB = 1024**3


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def one_rep(d: DaemonProcess, previous: set[str], args: Any) -> dict[str, Any]:
    def new_lease() -> dict[str, Any] | None:
        return next((x for x in d.call("lease.list")["active"] if x["id"] not in previous
                     and x["holder"].startswith("training") and x["state"] == "active"), None)

    lease = wait_until(new_lease, 240, "a training lease")
    wait_until(lambda: (d.call("train.status")["current"] or {}).get("steps_seen", 0) >= args.warm, 240,
               f"{args.warm} training steps", interval=0.05)
    status = d.call("train.status")["current"]
    window_start = time.time()
    time.sleep(args.window)  # steps are timed afterwards from the log: polling here would steal the trainer's CPU
    with d.client() as c:
        t_wall = time.time()
        t0 = time.perf_counter()
        c.call("lease.preempt", {"id": lease["id"]})
        t_call = time.perf_counter() - t0
        polls = 0
        while any(x["id"] == lease["id"] for x in c.call("lease.list")["active"]):
            polls += 1
            if time.perf_counter() - t0 > 60:
                raise TimeoutError("the preempted lease was not released within 60 s")
            time.sleep(args.poll)
        latency = time.perf_counter() - t0
    return {"lease": lease["id"], "trainer_pid": status.get("trainer_pid"), "steps_seen_before": status["steps_seen"],
            "window_start": window_start, "latency_s": latency, "preempt_call_s": t_call, "polls": polls,
            "t_wall": t_wall}


def log_parts(events: list[dict[str, Any]], rep: dict[str, Any]) -> dict[str, Any]:
    """The daemon's log lines of this preemption, from the preempt call on, and the intervals between them."""
    after = [e for e in events if "timestamp" in e and ts(e) >= rep["t_wall"] - 0.001]

    def first(name: str, **match: Any) -> dict[str, Any] | None:
        return next((e for e in after if e.get("event") == name
                     and all(e.get(k) == v for k, v in match.items())), None)

    ckpts = [(e["t"], e["step"]) for e in events if e.get("event") == "trainer: checkpoint"
             and rep["window_start"] <= e.get("t", 0) <= rep["t_wall"]]
    step_s = [(t2 - t1) / (s2 - s1) for (t1, s1), (t2, s2) in itertools.pairwise(ckpts) if s2 > s1]
    decision = first("decision: preempt lease", lease=rep["lease"])
    sigterm = first("lease preempted; asking the trainer to checkpoint and exit", lease=rep["lease"])
    preempted = first("trainer: preempted")
    exited = first("trainer exited")
    released = first("lease released", lease=rep["lease"])
    if not (decision and sigterm and preempted and exited and released):
        raise RuntimeError(f"log lines of the preemption of {rep['lease']} missing: "
                           f"{[e.get('event') for e in after][:20]}")
    return {
        "step_s": step_s,
        "call_to_sigterm_s": ts(sigterm) - rep["t_wall"],
        "sigterm_to_preempted_s": preempted["t"] - ts(sigterm),  # the trainer's own timestamp
        "preempted_to_exited_s": ts(exited) - preempted["t"],
        "exited_to_released_s": ts(released) - ts(exited),
        "released_to_seen_s": rep["t_wall"] + rep["latency_s"] - ts(released),
        "exit_code": exited.get("code"),
        "preempted_at_step": preempted.get("step"),
        "checkpoint": preempted.get("checkpoint"),
        "checkpoint_written_at_preemption": any(
            e.get("event") == "trainer: checkpoint" and e.get("path") == preempted.get("checkpoint")
            and ts(sigterm) <= ts(e) <= ts(exited) for e in after),
    }


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=6, help="preemptions (default 6)")
    p.add_argument("--warm", type=int, default=5, help="steps each trainer reports before it is watched (default 5)")
    p.add_argument("--window", type=float, default=2.0, help="seconds of steps watched before each preemption")
    p.add_argument("--poll", type=float, default=0.01, help="lease.list poll interval in seconds (default 0.01)")
    p.add_argument("--max-steps", type=int, default=100_000, help="the run's max_steps (default 100000)")
    p.add_argument("--hidden", type=int, help="build a demo Llama with this hidden size, not pre-trained "
                   "(default: init-demo's own, 128 wide and pre-trained)")
    p.add_argument("--layers", type=int, default=4, help="its layers, with --hidden (default 4)")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--checkpoint-steps", type=int, default=4)
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    workdir = short_tmpdir("mwpre")
    try:
        return measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(args: Any, workdir: Path) -> int:
    base = workdir / "demo"
    if args.hidden:
        code = ("import sys\nfrom memwarden.training.demo_model import build_demo_model\n"
                "h, n = int(sys.argv[2]), int(sys.argv[3])\n"
                "build_demo_model(sys.argv[1], hidden_size=h, num_layers=n, intermediate_size=h * 43 // 16,\n"
                "                 pretrain_steps=0)\n")
        cmd = [sys.executable, "-c", code, str(base), str(args.hidden), str(args.layers)]
    else:
        cmd = [str(BIN / "memwardenctl"), "model", "init-demo", str(base)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    sim = sim_gpu(workdir / "gpu.json", 12 * GiB)
    learning = {"enabled": True, "base_model": str(base), "ollama_base": "demo:tiny", "method": "lora",
                "importance_threshold": 50, "min_interval": "0s", "lr": 3e-3, "rank": 4, "alpha": 8,
                "max_steps": args.max_steps, "warmup_steps": 2, "micro_batch": args.micro_batch,
                "grad_accum": args.grad_accum, "max_seq_len": args.max_seq_len, "dry_run_steps": 0,
                "checkpoint_steps": args.checkpoint_steps, "forgetting_epsilon": 10.0,
                "lease_size": "2GiB", "device": "auto"}
    d = DaemonProcess({"daemon": {"sample_interval": "300ms", "log_level": "info"},
                       "gpu": {"backend": "sim", "sim_file": str(sim), "reserve": "512MiB"},
                       "ollama": {"url": ""}, "learning": learning}, workdir=workdir)
    reps: list[dict[str, Any]] = []
    with managed(d):
        lines = [json.dumps({"profile": "alice", "kind": kind, "content": f"{content} ({i})" if i else content,
                             "response": response, "importance": 5})
                 for i in range(2) for kind, content, response in FACTS]
        (workdir / "memories.jsonl").write_text("\n".join(lines) + "\n")
        subprocess.run([str(BIN / "memwardenctl"), "--socket", str(d.socket_path), "memories", "import",
                        str(workdir / "memories.jsonl")], check=True, capture_output=True, timeout=120)
        seen: set[str] = set()
        for _ in range(args.reps):
            rep = one_rep(d, seen, args)
            seen.add(rep["lease"])
            reps.append(rep)
        events = d.log_events()
        for rep in reps:
            rep.update(log_parts(events, rep))
        run = d.call("train.history", {"limit": 5})

    steps = [s for r in reps for s in r["step_s"]]
    step_med = statistics.median(steps)
    lat = [r["latency_s"] for r in reps]
    for r in reps:
        r["call_to_preempted_s"] = r["call_to_sigterm_s"] + r["sigterm_to_preempted_s"]
    parts = ("call_to_preempted_s", "call_to_sigterm_s", "sigterm_to_preempted_s", "preempted_to_exited_s",
             "exited_to_released_s", "released_to_seen_s")
    summary = {"latency_median_s": statistics.median(lat), "latency_max_s": max(lat), "latency_min_s": min(lat),
               "step_median_s": step_med, "step_p90_s": sorted(steps)[int(0.9 * (len(steps) - 1))],
               "steps_timed": len(steps),
               **{f"{k}_median": statistics.median(r[k] for r in reps) for k in parts},
               **{f"{k}_max": max(r[k] for r in reps) for k in parts}}
    summary["ratio_median"] = ratio(summary["latency_median_s"], step_med)
    summary["ratio_max"] = ratio(summary["latency_max_s"], step_med)
    summary["trainer_ratio_median"] = ratio(summary["sigterm_to_preempted_s_median"], step_med)
    met = summary["latency_median_s"] <= step_med

    ms = 1000.0
    rows = [
        ["lease.preempt → lease gone from lease.list", fmt(summary["latency_median_s"] * ms),
         fmt(summary["latency_max_s"] * ms), fmt_ratio(summary["ratio_median"]), fmt_ratio(summary["ratio_max"]),
         "≤ 1 step", "yes" if met else "NO"],
        ["  preempt call → SIGTERM sent to the trainer", fmt(summary["call_to_sigterm_s_median"] * ms),
         fmt(summary["call_to_sigterm_s_max"] * ms), "", "", "", ""],
        ["lease.preempt → trainer's \"preempted\" event (checkpoint written)",
         fmt(summary["call_to_preempted_s_median"] * ms), fmt(summary["call_to_preempted_s_max"] * ms),
         fmt_ratio(ratio(summary["call_to_preempted_s_median"], step_med)),
         fmt_ratio(ratio(summary["call_to_preempted_s_max"], step_med)), "", ""],
        ["  SIGTERM → trainer's \"preempted\" event (its own timing)",
         fmt(summary["sigterm_to_preempted_s_median"] * ms), fmt(summary["sigterm_to_preempted_s_max"] * ms),
         fmt_ratio(summary["trainer_ratio_median"]),
         fmt_ratio(ratio(summary["sigterm_to_preempted_s_max"], step_med)), "", ""],
        ["  \"preempted\" → trainer exited (exit, reaped)", fmt(summary["preempted_to_exited_s_median"] * ms),
         fmt(summary["preempted_to_exited_s_max"] * ms), "", "", "", ""],
        ["  exited → lease released", fmt(summary["exited_to_released_s_median"] * ms),
         fmt(summary["exited_to_released_s_max"] * ms), "", "", "", ""],
        ["  released → seen by the lease.list poll", fmt(summary["released_to_seen_s_median"] * ms),
         fmt(summary["released_to_seen_s_max"] * ms), "", "", "", ""],
        ["baseline: one training step (median, p90)", fmt(step_med * ms), fmt(summary["step_p90_s"] * ms) + " (p90)",
         "1.00×", "", "", ""],
    ]
    text = table(["preemption (ms)", "median", "max", "÷ step (median)", "max ÷ step", "goal", "met"], rows)
    codes = sorted({r["exit_code"] for r in reps})
    wrote = sum(r["checkpoint_written_at_preemption"] for r in reps)
    text += (f"\n\n{len(reps)} preemptions of one run (each one a fresh trainer resumed from the previous one's "
             f"checkpoint), at steps {[r['preempted_at_step'] for r in reps]}; trainer exit codes {codes}; a "
             f"checkpoint was written at the preemption in {wrote} of {len(reps)} (otherwise the last one was of the "
             f"current step). Step time: {len(steps)} blocks between consecutive checkpoint events (every "
             f"{args.checkpoint_steps} steps, trainer timestamps, 1 ms) in the {args.window:g} s before each "
             f"preemption. lease.list polled every "
             f"{args.poll * 1000:g} ms; the parts come from the daemon's log (1 µs timestamps) and the trainer's "
             f"event time (1 ms), so they sum to the latency only roughly. Demo Llama (hidden {args.hidden or 64}, "
             f"{args.layers if args.hidden else 2} layers), LoRA r 4, micro_batch {args.micro_batch} × grad_accum "
             f"{args.grad_accum}, max_seq_len {args.max_seq_len}, checkpoint_steps {args.checkpoint_steps}, CPU; "
             f"run state at the end: "
             f"{run[0]['state'] if run else '—'}.")
    emit("preemption latency", text, {"met": met, "summary": summary, "reps": reps,
                                      "args": {k: v for k, v in vars(args).items() if k != "json"}}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
