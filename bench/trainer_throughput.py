"""Trainer throughput: tokens/s of `python -m memwarden.training` against a plain transformers + peft loop.

A demo Llama somewhat larger than the default (`build_demo_model`: hidden --hidden 256, --layers 4, 4 heads /
2 KV heads, intermediate 688, vocab 512; about 3.2 M parameters) is built once, offline. Both sides train a
LoRA (r 8, alpha 16, dropout 0.05 on q/k/v/o, lr 2e-3, cosine with 3 warm-up steps, AdamW, clip 1.0) on the
same 64 conversations with the same seed, --micro-batch × --grad-accum examples per optimizer step, the same
examples in the same order at every step (memwarden's tokenizer rendering and seeded order are used to prepare
both sides' data, outside any timed region), --steps steps per run, in a fresh process each run (same
interpreter, same environment). Runs alternate trainer, plain, plain, trainer, … (--runs of each).

Tokens counted (both sides alike): every real token of the step's examples, prompt and template tokens as well
as assistant tokens (padding excluded) — what the trainer's `tokens_per_s` counts. Step time: the trainer's own
(perf_counter around `_train_step`: batching, forward, loss, backward, clip, optimizer and scheduler step),
recovered per step as tokens ÷ its reported tokens_per_s; the plain loop times the same work the same way.
The first --skip steps of each run are left out (warm-up: allocator, first LR steps); per run the median of the
per-step tokens/s is taken, and the figure reported is the median over runs.

The plain loop (this script run with --plain-loop JOB.json): AutoModelForCausalLM + peft.get_peft_model, the
model's own loss (`labels=`, mean per micro-batch, divided by grad_accum), clip_grad_norm_, AdamW,
get_cosine_schedule_with_warmup — the loop every tutorial writes, with none of the trainer's checkpointing,
OOM retry, EWC, progress events or stop checks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, kill_process, parser, ratio, table

GOAL = 0.97  # trainer tokens/s ÷ plain loop tokens/s
RUN_TIMEOUT = 240.0
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
TOPICS = ("the garden", "the trip to the coast", "Mira's cello", "the morning coffee", "the 8:12 train",
          "the journal", "the library dream", "the wifi card", "the concert", "the harbour walk")


def conversations(n: int, seed: int) -> list[str]:
    """n JSONL lines of varied length (a user question, an assistant answer of 1–3 corpus sentences)."""
    from memwarden.training.demo_model import CORPUS  # no torch: only constants at import

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question = f"What do you remember about {rng.choice(TOPICS)}? {rng.choice(CORPUS)[: rng.randint(20, 80)]}"
        answer = " ".join(rng.sample(CORPUS, rng.randint(1, 3)))
        out.append(json.dumps({"messages": [{"role": "user", "content": question},
                                            {"role": "assistant", "content": answer}]}))
    return out


# ---------------------------------------------------------------------------------------------------- children

def build_model(directory: str, hidden: int, layers: int) -> None:
    from memwarden.training.demo_model import build_demo_model

    # throughput only: the weights as initialised, no pre-training
    build_demo_model(directory, hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
                     intermediate_size=hidden * 43 // 16, pretrain_steps=0)


def plain_step(model: Any, params: list[Any], optimizer: Any, scheduler: Any, picked: list[Any], micro_batch: int,
               grad_accum: int, pad: int) -> tuple[float, int]:
    """One optimizer step of the plain loop: (loss, tokens processed)."""
    import torch

    from memwarden.training.data import IGNORE

    tokens, total = 0, 0.0
    for i in range(0, len(picked), micro_batch):
        chunk = picked[i : i + micro_batch]
        width = max(len(e) for e in chunk)
        ids = torch.tensor([list(e.input_ids) + [pad] * (width - len(e)) for e in chunk])
        labels = torch.tensor([list(e.labels) + [IGNORE] * (width - len(e)) for e in chunk])
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in chunk])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / grad_accum
        loss.backward()
        total += float(loss.detach())
        tokens += sum(len(e) for e in chunk)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total, tokens


def plain_loop(job_path: str) -> int:
    """The baseline: a plain transformers + peft training loop over the JobSpec's data; one JSON line per step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup, set_seed

    from memwarden.learning.jobspec import JobSpec
    from memwarden.training.data import Order, load_split

    spec = JobSpec.read(Path(job_path))
    h = spec.hyper
    set_seed(h.seed)
    tok = AutoTokenizer.from_pretrained(spec.base_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(spec.base_model, dtype=torch.float32, local_files_only=True)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=h.rank, lora_alpha=h.alpha, lora_dropout=h.dropout,
                                             target_modules=list(h.target_modules), bias="none",
                                             task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=h.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=h.warmup_steps,
                                                num_training_steps=h.max_steps)
    examples = load_split("train", spec.train_file, tok, h.max_seq_len).examples
    order = Order(len(examples), h.seed)
    effective = h.micro_batch * h.grad_accum
    pad = tok.pad_token_id
    print(json.dumps({"event": "start", "t": time.time()}), flush=True)

    for step in range(1, h.max_steps + 1):
        started = time.perf_counter()
        picked = [examples[i] for i in order.indices((step - 1) * effective, effective)]
        loss, tokens = plain_step(model, params, optimizer, scheduler, picked, h.micro_batch, h.grad_accum, pad)
        elapsed = time.perf_counter() - started
        print(json.dumps({"event": "step", "t": time.time(), "step": step, "loss": loss, "tokens": tokens,
                          "seconds": elapsed}), flush=True)
    return 0


def interleaved(job_path: str, pairs: int) -> int:
    """Both step functions in one process, on one model and optimizer, alternating step by step on the same batch:
    the trainer's own `Trainer._train_step` (set up by the trainer's own `_run`) and `plain_step`."""
    from memwarden.learning.jobspec import JobSpec
    from memwarden.training.events import Emitter
    from memwarden.training.trainer import Trainer

    class Interleaved(Trainer):
        def _loop(self) -> None:
            params = list(self.params.values())
            for k in range(pairs):
                picked = [self.train.examples[i] for i in self.order.indices(self.cursor, self.effective)]
                timed = {}
                for kind in ("trainer", "plain") if k % 2 == 0 else ("plain", "trainer"):
                    started = time.perf_counter()
                    if kind == "trainer":
                        tokens = self._train_step()[1]
                    else:
                        tokens = plain_step(self.b.model, params, self.optimizer, self.scheduler, picked,
                                            self.micro_batch, self.grad_accum, self.pad_id)[1]
                    timed[kind] = (time.perf_counter() - started, tokens)
                print(json.dumps({"event": "pair", "pair": k + 1, **{f"{kind}_seconds": v[0] for kind, v in
                                                                     timed.items()},
                                  "tokens": timed["trainer"][1], "same_tokens": timed["trainer"][1] ==
                                  timed["plain"][1]}), flush=True)

        def _finish(self) -> int:
            return 0

    return Trainer.run(Interleaved(JobSpec.read(Path(job_path)), Emitter(sys.stderr)))


# ---------------------------------------------------------------------------------------------------- parent

def step_tokens(job: Path) -> dict[int, int]:
    """Step → tokens processed, from the same data and order both sides use (for the trainer's step times)."""
    code = ("import json,sys\n"
            "from memwarden.learning.jobspec import JobSpec\n"
            "from memwarden.training.data import Order, load_split\n"
            "from memwarden.training.model import load_tokenizer\n"
            "s=JobSpec.read(sys.argv[1]); h=s.hyper; e=h.micro_batch*h.grad_accum\n"
            "ex=load_split('train',s.train_file,load_tokenizer(s.base_model),h.max_seq_len).examples\n"
            "o=Order(len(ex),h.seed)\n"
            "print(json.dumps({k:sum(len(ex[i]) for i in o.indices((k-1)*e,e)) for k in range(1,h.max_steps+1)}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True, check=True,
                         env={**os.environ, **ENV}, timeout=RUN_TIMEOUT).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def run_child(argv: list[str]) -> list[dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        kill_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {err[-2000:]}")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def summarise(kind: str, events: list[dict[str, Any]], tokens: dict[int, int], skip: int) -> dict[str, Any]:
    steps = [e for e in events if e["event"] == "step"]
    rows = []
    for e in steps:
        if kind == "trainer":
            n = tokens[e["step"]]
            rate = e["tokens_per_s"]
            seconds = n / rate
        else:
            n, seconds = e["tokens"], e["seconds"]
            rate = n / seconds
        rows.append({"step": e["step"], "tokens": n, "seconds": seconds, "rate": rate, "t": e["t"]})
    steady = [r for r in rows if r["step"] > skip]
    span = steady[-1]["t"] - rows[skip - 1]["t"] if skip >= 1 else None
    return {
        "steps": len(rows),
        "median_tokens_per_s": statistics.median(r["rate"] for r in steady),
        "aggregate_tokens_per_s": sum(r["tokens"] for r in steady) / sum(r["seconds"] for r in steady),
        # wall clock between progress lines: adds whatever each side does between timed steps
        "wall_tokens_per_s": sum(r["tokens"] for r in steady) / span if span else None,
        "median_step_s": statistics.median(r["seconds"] for r in steady),
        "last_loss": steps[-1]["loss"],
    }


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="runs of each side, alternating (default 5)")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per run (default 24)")
    p.add_argument("--skip", type=int, default=4, help="first steps of each run left out (default 4)")
    p.add_argument("--hidden", type=int, default=256, help="demo model hidden size (default 256)")
    p.add_argument("--layers", type=int, default=4, help="demo model layers (default 4)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--pairs", type=int, default=24,
                   help="interleaved step pairs in the one-process comparison (default 24; 0: skip it)")
    p.add_argument("--plain-loop", metavar="JOB", help=argparse.SUPPRESS)
    p.add_argument("--interleaved", metavar="JOB", help=argparse.SUPPRESS)
    p.add_argument("--build-model", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_loop:
        return plain_loop(args.plain_loop)
    if args.interleaved:
        return interleaved(args.interleaved, args.pairs)
    if args.build_model:
        build_model(args.build_model, args.hidden, args.layers)
        return 0
    exit_cleanly_on_sigterm()

    from memwarden.learning.jobspec import Ewc, Hyper, JobSpec

    tmp = Path(tempfile.mkdtemp(prefix="mw-tput-"))
    try:
        base = tmp / "base"
        subprocess.run([sys.executable, __file__, "--build-model", str(base), "--hidden", str(args.hidden),
                        "--layers", str(args.layers)], check=True, capture_output=True, env={**os.environ, **ENV},
                       timeout=RUN_TIMEOUT)
        lines = conversations(64, seed=7)
        (tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
        (tmp / "holdout.jsonl").write_text("\n".join(lines[:4]) + "\n")
        spec = JobSpec(
            run_id="throughput", adapter="bench", base_model=str(base), method="lora", output_dir="",
            train_file=str(tmp / "train.jsonl"), holdout_file=str(tmp / "holdout.jsonl"),
            hyper=Hyper(lr=2e-3, rank=8, alpha=16, dropout=0.05, micro_batch=args.micro_batch,
                        grad_accum=args.grad_accum, max_steps=args.steps, warmup_steps=3,
                        max_seq_len=args.max_seq_len, seed=42, eval_every=0),
            ewc=Ewc(lam=0.0, fisher_samples=0), checkpoint_every_steps=0, checkpoint_every_seconds=0.0)
        job = tmp / "job.json"
        spec.write(job)
        tokens = step_tokens(job)

        results: dict[str, list[dict[str, Any]]] = {"trainer": [], "plain": []}
        sequence = []
        for i in range(args.runs):
            sequence += ["trainer", "plain"] if i % 2 == 0 else ["plain", "trainer"]
        for n, kind in enumerate(sequence):
            if kind == "trainer":
                out = tmp / f"out-{n}"
                spec_n = JobSpec.from_dict({**json.loads(spec.to_json()), "output_dir": str(out)})
                job_n = tmp / f"job-{n}.json"
                spec_n.write(job_n)
                events = run_child(["-m", "memwarden.training", str(job_n)])
                shutil.rmtree(out, ignore_errors=True)
            else:
                events = run_child([__file__, "--plain-loop", str(job)])
            results[kind].append(summarise(kind, events, tokens, args.skip))
        pairs: list[dict[str, Any]] = []
        if args.pairs:
            out = tmp / "out-interleaved"
            spec_i = JobSpec.from_dict({**json.loads(spec.to_json()), "output_dir": str(out),
                                        "hyper": {**json.loads(spec.to_json())["hyper"],
                                                  "max_steps": max(args.steps, args.pairs)}})
            spec_i.write(tmp / "job-interleaved.json")
            pairs = [e for e in run_child([__file__, "--interleaved", str(tmp / "job-interleaved.json"),
                                           "--pairs", str(args.pairs)]) if e["event"] == "pair"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    summary: dict[str, Any] = {
        key: {"trainer": med("trainer", key), "plain": med("plain", key),
              "ratio": ratio(med("trainer", key), med("plain", key))}
        for key in ("median_tokens_per_s", "aggregate_tokens_per_s", "wall_tokens_per_s")}
    # each trainer run against the plain run next to it (the sequence is T P P T T P …: pairs (0,0), (1,1), …)
    paired = [t["median_tokens_per_s"] / q["median_tokens_per_s"]
              for t, q in zip(results["trainer"], results["plain"], strict=True)]
    summary["paired_ratio"] = {"median": statistics.median(paired), "min": min(paired), "max": max(paired),
                               "each": paired}
    steady_pairs = [x for x in pairs if x["pair"] > args.skip]
    if steady_pairs:
        t_rate = statistics.median(x["tokens"] / x["trainer_seconds"] for x in steady_pairs)
        p_rate = statistics.median(x["tokens"] / x["plain_seconds"] for x in steady_pairs)
        summary["interleaved"] = {
            "trainer": t_rate, "plain": p_rate, "ratio_of_medians": t_rate / p_rate,
            "median_pair_ratio": statistics.median(x["plain_seconds"] / x["trainer_seconds"] for x in steady_pairs),
            "pairs": len(steady_pairs), "same_tokens": all(x["same_tokens"] for x in pairs)}
    step_s = {"trainer": med("trainer", "median_step_s"), "plain": med("plain", "median_step_s")}
    met = summary["median_tokens_per_s"]["ratio"] >= GOAL

    def spread(kind: str, key: str) -> str:
        values = [r[key] for r in results[kind]]
        return f"{min(values):.0f}–{max(values):.0f}"

    rows = []
    for key, label in (("median_tokens_per_s", "tokens/s: median of steady steps (trainer: its own tokens_per_s)"),
                       ("aggregate_tokens_per_s", "tokens/s: Σ tokens ÷ Σ step time, steady steps"),
                       ("wall_tokens_per_s", "tokens/s: wall clock between progress lines")):
        s = summary[key]
        rows.append([label, fmt(s["trainer"], 0), spread("trainer", key), fmt(s["plain"], 0), spread("plain", key),
                     fmt_ratio(s["ratio"]), f"≥ {GOAL:.2f}×" if key == "median_tokens_per_s" else "",
                     ("yes" if met else "NO") if key == "median_tokens_per_s" else ""])
    pr = summary["paired_ratio"]
    rows.append(["tokens/s ratio: each trainer run ÷ the plain run next to it (median)", "", "", "", "",
                 f"{fmt_ratio(pr['median'])} ({pr['min']:.2f}–{pr['max']:.2f})", "", ""])
    rows.append(["step time, median (ms)", fmt(step_s["trainer"] * 1000), "", fmt(step_s["plain"] * 1000), "",
                 fmt_ratio(ratio(step_s["trainer"], step_s["plain"])), "", ""])
    if "interleaved" in summary:
        iv = summary["interleaved"]
        rows.append(["one process, steps interleaved on one model: tokens/s (median)", fmt(iv["trainer"], 0), "",
                     fmt(iv["plain"], 0), "", f"{fmt_ratio(iv['ratio_of_medians'])} (pairwise "
                     f"{iv['median_pair_ratio']:.2f}×)", "", ""])
    text = table(["LoRA training, CPU", "memwarden trainer", "min–max over runs", "baseline: plain loop",
                  "min–max over runs", "ratio", "goal", "met"], rows)
    losses = {k: [round(r["last_loss"], 3) for r in v] for k, v in results.items()}
    text += (f"\n\n{args.runs} runs of each side in fresh processes, alternating (T P P T …); {args.steps} steps per "
             f"run, the first {args.skip} left out; each tokens/s figure is the median over runs of a per-run figure. "
             f"Demo Llama hidden {args.hidden}, {args.layers} layers; LoRA r 8 on q/k/v/o; micro_batch "
             f"{args.micro_batch} × grad_accum {args.grad_accum}, max_seq_len {args.max_seq_len}; torch's default "
             f"threads ({os.cpu_count()} CPUs). Tokens = prompt + template + assistant tokens of the step's examples "
             f"(padding excluded), {sum(tokens.values()) / len(tokens):.0f} per step on average. Loss at the last "
             f"step (trainer: token-weighted over the step; plain: mean of micro-batch means): trainer "
             f"{sorted(set(losses['trainer']))}, plain {sorted(set(losses['plain']))}.")
    if "interleaved" in summary:
        text += (f" Interleaved: one trainer process set up by the trainer's own `_run`, its `_train_step` and the "
                 f"plain step taking turns ({summary['interleaved']['pairs']} steady pairs, who goes first "
                 f"alternating, the same batch for both in each pair), which takes process-to-process noise out.")
    emit("trainer throughput", text, {"goal_ratio": GOAL, "met": met, "summary": summary, "step_s": step_s,
                                      "runs": results, "pairs": pairs,
                                      "args": {k: v for k, v in vars(args).items()
                                               if k not in ("plain_loop", "build_model", "interleaved", "json")}},
         args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
