"""The trainer as the daemon runs it: `python -m memwarden.training JOB.json`, a real subprocess, real torch on
CPU, on the tiny demo model built once for the session (tests/conftest.py). Progress is read from its stdout,
line by line."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from memwarden.learning.adapter_check import check_adapter, read_safetensors_header
from memwarden.learning.execution import halved_batch
from memwarden.learning.jobspec import (
    EXIT_DONE,
    EXIT_PREEMPTED,
    FULL_FT_LR_RANGE,
    GENERAL_PROBE_FILE,
    Ewc,
    Hyper,
    JobSpec,
)

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft", "bitsandbytes")),
    reason="the train extra (torch, transformers, peft, bitsandbytes) is not installed",
)

RUN_TIMEOUT = 240
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FACTS = [
    ("Who is Mira?", "Mira is your sister; she lives in Lisbon and plays the cello."),
    ("What do I drink in the morning?", "Black coffee, no sugar, before eight."),
    ("Where did we plan to go?", "To the coast, after the garden is done."),
    ("What is my cat called?", "Your cat is called Pepper and she is afraid of the vacuum."),
    ("When is the concert?", "The concert is on Friday at seven in the old church."),
    ("What did I dream about?", "A library where every book was a conversation."),
    ("Which train do I take?", "The 8:12 to the city, platform two."),
    ("Where is the wifi password?", "It is written on the card under the lamp."),
]
PROBE = [("Say hello.", "Hello! How are you today?"), ("Count to five.", "One, two, three, four, five.")]


def _conversation(question: str, answer: str, system: bool = False) -> str:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if system:
        messages.insert(0, {"role": "system", "content": "You remember what matters."})
    return json.dumps({"messages": messages})


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    files = {
        "train": [_conversation(q, a, i % 3 == 0) for i, (q, a) in enumerate(FACTS * 2)],
        "holdout": [_conversation(q, a) for q, a in FACTS[:4]],
        "probe": [_conversation(q, a) for q, a in PROBE],
    }
    paths = {}
    for name, lines in files.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


@pytest.fixture(scope="session")
def base_spec(demo_base, data) -> JobSpec:
    """Long enough (60 steps) that a kill or a SIGTERM lands mid-run; checkpoints every 5 steps; two micro-steps
    per step, so a signal usually lands inside a step."""
    return JobSpec(
        run_id="run-1",
        adapter="memories",
        base_model=str(demo_base),
        method="lora",
        output_dir="",
        train_file=str(data["train"]),
        holdout_file=str(data["holdout"]),
        probe_file=str(data["probe"]),
        general_file=str(demo_base / GENERAL_PROBE_FILE),
        hyper=Hyper(lr=1e-2, micro_batch=2, grad_accum=2, max_steps=60, warmup_steps=5, max_seq_len=128,
                    eval_every=20, target_modules=ALL_LINEAR),
        ewc=Ewc(fisher_samples=8),
        checkpoint_every_steps=5,
    )


def adapter_tensors(spec: JobSpec) -> int:
    layers = json.loads((Path(spec.base_model) / "config.json").read_text())["num_hidden_layers"]
    return len(ALL_LINEAR) * layers * 2


def lora_params(spec: JobSpec) -> int:
    """r × (in + out) for each of the seven projections of each layer of the base."""
    c = json.loads((Path(spec.base_model) / "config.json").read_text())
    h, m = c["hidden_size"], c["intermediate_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    per_layer = 2 * (h + h) + 2 * (h + kv) + 3 * (h + m)  # q, o; k, v; gate, up, down
    return spec.hyper.rank * per_layer * c["num_hidden_layers"]


def _spec_at(spec: JobSpec, out: Path, **changes: Any) -> tuple[JobSpec, Path]:
    spec = replace(spec, output_dir=str(out / "run"), **changes)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "job.json"
    spec.write(path)
    return spec, path


class Trainer:
    """The subprocess, its stdout read line by line (as the daemon reads it)."""

    def __init__(self, job: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memwarden.training", str(job)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: list[dict[str, Any]] = []

    def until(self, predicate) -> dict[str, Any]:
        """Read events until one satisfies predicate; fail if the trainer ends first."""
        deadline = time.monotonic() + RUN_TIMEOUT
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            if predicate(event):
                return event
            assert time.monotonic() < deadline, "trainer too slow"
        self.proc.wait()
        pytest.fail(f"trainer ended (rc={self.proc.returncode}) first: {self.events[-3:]} {self.proc.stderr.read()}")

    def finish(self) -> tuple[int, list[dict[str, Any]], str]:
        out, err = self.proc.communicate(timeout=RUN_TIMEOUT)
        self.events += [json.loads(line) for line in out.splitlines()]
        return self.proc.returncode, self.events, err


def run(job: Path) -> tuple[int, list[dict[str, Any]], str]:
    return Trainer(job).finish()


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def assert_done(rc: int, events: list[dict[str, Any]], err: str) -> dict[str, Any]:
    assert rc == EXIT_DONE, (of(events, "error"), err[-3000:])
    assert of(events, "error") == []
    done = of(events, "done")
    assert len(done) == 1 and events[-1] is done[0]
    return done[0]


@pytest.fixture(scope="session")
def reference(base_spec, tmp_path_factory) -> dict[str, Any]:
    """One uninterrupted LoRA run of base_spec: the other tests compare against it."""
    spec, job = _spec_at(base_spec, tmp_path_factory.mktemp("reference"))
    rc, events, err = run(job)
    return {"spec": spec, "rc": rc, "events": events, "err": err, "done": assert_done(rc, events, err)}


def test_lora_run_learns_and_ships_the_adapter_alone(reference):
    events, done, spec = reference["events"], reference["done"], reference["spec"]
    start = of(events, "start")[0]
    assert start["resumed_from_step"] == 0 and start["method"] == "lora" and start["device"] == "cpu"
    steps = of(events, "step")
    assert [s["step"] for s in steps] == list(range(1, 61))
    for s in steps:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "memory_bytes"} <= s.keys()
        assert s["memory_bytes"] > 0 and s["tokens_per_s"] > 0
    assert max(s["lr"] for s in steps) == pytest.approx(1e-2)
    assert steps[-1]["lr"] < steps[30]["lr"] < 1e-2  # cosine decay after the warmup
    assert [e["step"] for e in of(events, "eval")] == [20, 40]
    assert [c["step"] for c in of(events, "checkpoint")] == list(range(5, 61, 5))

    ev = done["eval"]
    assert ev["holdout_loss_after"] < ev["holdout_loss_before"] - 1.0, ev  # a tiny repeated dataset is learnt
    assert sum(s["loss"] for s in steps[-10:]) < sum(s["loss"] for s in steps[:10]) - 5
    assert ev["probe_loss_before"] is not None and ev["probe_loss_after"] is not None

    out = Path(spec.output_dir)
    final = Path(done["final_dir"])
    assert final == out / "final"
    assert sorted(p.name for p in final.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "fisher.safetensors"]
    cfg = json.loads((final / "adapter_config.json").read_text())
    assert type(cfg["lora_alpha"]) is int and cfg["lora_alpha"] == 16 and cfg["r"] == 8
    assert cfg["peft_type"] == "LORA" and not cfg["use_dora"] and not cfg["modules_to_save"]
    names = [k for k in read_safetensors_header(final / "adapter_model.safetensors") if k != "__metadata__"]
    # 7 modules × the base's layers × (A, B), named default (no adapter segment in the names)
    assert len(names) == adapter_tensors(spec)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in names)
    assert sorted(read_safetensors_header(final / "fisher.safetensors")) == sorted([*names, "__metadata__"])
    assert check_adapter(final, spec.base_model).ok
    assert done["export"] == {"ok": True, "problems": []}
    assert not (out / "checkpoints").exists()  # checkpoints were for resuming; they do not ship
    assert json.loads((out / "eval.json").read_text())["eval"] == ev


def test_a_finished_run_is_reported_again_not_retrained(reference, tmp_path):
    job = tmp_path / "job.json"
    reference["spec"].write(job)
    rc, events, err = run(job)
    done = assert_done(rc, events, err)
    assert done["already_done"] is True and of(events, "step") == []
    assert done["eval"] == reference["done"]["eval"]


def test_qlora_trains_on_a_4bit_base_on_cpu(base_spec, tmp_path):
    spec, job = _spec_at(base_spec, tmp_path, method="qlora",
                         hyper=replace(base_spec.hyper, max_steps=8, eval_every=0))
    rc, events, err = run(job)
    done = assert_done(rc, events, err)
    assert len(of(events, "step")) == 8
    start = of(events, "start")[0]
    # every linear layer of the blocks is NF4 (lm_head stays fp32)
    assert start["quantized_layers"] == adapter_tensors(base_spec) // 2
    assert start["trainable_params"] == lora_params(base_spec)  # the LoRA matrices only
    assert done["eval"]["holdout_loss_after"] < done["eval"]["holdout_loss_before"]
    final = Path(done["final_dir"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in final.iterdir()}
    assert check_adapter(final, spec.base_model).ok  # fp32 LoRA matrices, not quantized tensors


def test_full_fine_tune_clamps_a_too_small_lr(base_spec, tmp_path):
    _, job = _spec_at(base_spec, tmp_path, method="full",
                      hyper=replace(base_spec.hyper, lr=5e-6, max_steps=3, warmup_steps=0, eval_every=0))
    rc, events, err = run(job)
    done = assert_done(rc, events, err)
    (clamp,) = of(events, "clamp")
    assert clamp["what"] == "lr" and clamp["requested"] == 5e-6 and clamp["used"] == 1e-5
    assert clamp["range"] == list(FULL_FT_LR_RANGE)
    assert max(s["lr"] for s in of(events, "step")) == pytest.approx(1e-5)
    names = {p.name for p in Path(done["final_dir"]).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith(("optimizer", "checkpoint", "adapter", "README")) for n in names)


def test_preempted_then_killed_run_resumes_to_the_same_result(base_spec, reference, tmp_path):
    """SIGTERM → checkpoint, exit 75 → resume → kill -9 → resume → done, equal to the uninterrupted run."""
    spec, job = _spec_at(base_spec, tmp_path)
    ckpts = Path(spec.output_dir) / "checkpoints"

    first = Trainer(job)
    signalled = first.until(lambda e: e["event"] == "step" and e["step"] >= 8)["step"]
    # How fast it answers is bench/preemption_latency.py's figure, not an assertion here.
    first.proc.send_signal(signal.SIGTERM)
    pre = first.until(lambda e: e["event"] == "preempted")
    rc, events, err = first.finish()
    assert rc == EXIT_PREEMPTED, err[-2000:]
    assert events[-1] is pre and pre["signal"] == signal.SIGTERM
    assert pre["step"] == of(events, "step")[-1]["step"] >= signalled  # the last completed step
    assert Path(pre["checkpoint"]) == ckpts / f"step-{pre['step']}"
    assert (Path(pre["checkpoint"]) / "meta.json").is_file()

    second = Trainer(job)
    start = second.until(lambda e: e["event"] == "start")
    assert start["resumed_from_step"] == pre["step"]
    assert (start["micro_batch"], start["grad_accum"]) == (2, 2)
    assert second.until(lambda e: e["event"] == "step")["step"] == pre["step"] + 1
    second.until(lambda e: e["event"] == "checkpoint" and e["step"] >= pre["step"] + 10)
    second.proc.kill()  # SIGKILL: no handler runs, maybe in the middle of the next checkpoint's write
    second.proc.wait()
    assert of(second.events, "done") == []
    kept = sorted(int(p.name[5:]) for p in ckpts.iterdir() if p.name.startswith("step-"))
    assert 1 <= len(kept) <= 2  # the last two are kept

    rc, events, err = run(job)
    done = assert_done(rc, events, err)
    start = of(events, "start")[0]
    assert start["resumed_from_step"] == kept[-1] >= pre["step"] + 10
    assert [s["step"] for s in of(events, "step")] == list(range(kept[-1] + 1, 61))
    # the same weights, optimizer, schedule, data order and dropout RNG as the uninterrupted run
    for key, value in reference["done"]["eval"].items():
        assert value is not None and done["eval"][key] == pytest.approx(value, rel=1e-5), key


def test_a_run_killed_at_its_memory_max_resumes_with_the_halved_micro_batch_of_its_new_spec(base_spec, tmp_path):
    """The daemon restarts a trainer the kernel killed at its MemoryMax with the micro-batch halved; the
    checkpoint it resumes from was written at the larger one, which must not come back."""
    spec, job = _spec_at(base_spec, tmp_path, hyper=replace(base_spec.hyper, max_steps=12))
    first = Trainer(job)
    ckpt = first.until(lambda e: e["event"] == "checkpoint")
    first.proc.kill()  # SIGKILL, as the OOM killer sends it
    first.proc.wait()
    halved_batch(spec).write(job)
    rc, events, err = run(job)
    done = assert_done(rc, events, err)
    start = of(events, "start")[0]
    assert start["resumed_from_step"] >= ckpt["step"]
    assert (start["micro_batch"], start["grad_accum"]) == (1, 4)  # the same effective batch, in smaller pieces
    assert done["step"] == 12


def test_dry_run_stops_after_n_steps_and_an_oom_is_retried_with_half_the_micro_batch(base_spec, tmp_path):
    spec, job = _spec_at(base_spec, tmp_path, dry_run_steps=4, inject_oom_at_step=3,
                         hyper=replace(base_spec.hyper, micro_batch=4, grad_accum=1))
    rc, events, err = run(job)
    done = assert_done(rc, events, err)
    (oom,) = of(events, "oom_retry")
    assert (oom["step"], oom["micro_batch"], oom["grad_accum"]) == (3, 2, 2)  # the same effective batch
    kinds = [e["event"] for e in events]
    assert kinds.index("oom_retry") == kinds.index("step") + 2  # after step 2, before step 3
    assert [s["step"] for s in of(events, "step")] == [1, 2, 3, 4]  # step 3 retried, not skipped
    assert done["dry_run"] is True and done["final_dir"] is None and done["step"] == 4
    assert of(events, "start")[0]["steps"] == 4
    assert done["eval"] is None  # a pre-flight of the steps: nothing it would measure is reported
    out = Path(spec.output_dir)
    assert not (out / "final").exists() and not (out / "eval.json").exists() and not (out / "checkpoints").exists()


def test_an_oom_at_micro_batch_1_gives_up(base_spec, tmp_path):
    _, job = _spec_at(base_spec, tmp_path, inject_oom_at_step=1,
                      hyper=replace(base_spec.hyper, micro_batch=1, grad_accum=4, max_steps=2))
    rc, events, _ = run(job)
    assert rc == 1
    (error,) = of(events, "error")
    assert "micro_batch 1" in error["message"] and of(events, "oom_retry") == []


def test_ewc_continues_the_adapter_holds_it_near_its_start_and_combines_the_fisher(base_spec, reference, tmp_path):
    """Two continuations of the reference adapter, with λ = 0 and with a large λ."""
    import torch
    from safetensors.torch import load_file

    prior_dir = Path(reference["done"]["final_dir"])
    prior = load_file(str(prior_dir / "fisher.safetensors"))
    initial = load_file(str(prior_dir / "adapter_model.safetensors"))
    runs = {}
    # The continuation is of data the reference learned: its Fisher is small, so λ is the largest the config takes.
    for lam in (0.0, 1e6):
        _, job = _spec_at(
            base_spec, tmp_path / f"lam-{lam:g}", init_adapter=str(prior_dir),
            ewc=Ewc(lam=lam, decay=0.9, fisher_samples=8, prior_fisher=str(prior_dir / "fisher.safetensors")),
            hyper=replace(base_spec.hyper, max_steps=8, warmup_steps=0, eval_every=0),
        )
        rc, events, err = run(job)
        done = assert_done(rc, events, err)
        final = Path(done["final_dir"])
        end = load_file(str(final / "adapter_model.safetensors"))
        runs[lam] = {"events": events, "done": done, "fisher": load_file(str(final / "fisher.safetensors")),
                     "moved": sum(float((end[k] - initial[k]).pow(2).sum()) for k in initial)}
        # it started from the promoted adapter: its before-loss is the reference's after-loss
        assert done["eval"]["holdout_loss_before"] == pytest.approx(reference["done"]["eval"]["holdout_loss_after"])

    off, on = runs[0.0], runs[1e6]
    assert of(off["events"], "start")[0]["ewc"]["active"] is False
    assert "ewc_penalty" not in of(off["events"], "step")[0]
    ewc = of(on["events"], "start")[0]["ewc"]
    assert ewc["active"] is True and ewc["tensors"] == adapter_tensors(base_spec) and ewc["unfit"] == 0
    steps = of(on["events"], "step")
    assert steps[0]["ewc_penalty"] == 0.0  # θ* is where this run starts
    assert steps[-1]["ewc_penalty"] > 0.0
    assert on["moved"] < 0.5 * off["moved"], (on["moved"], off["moved"])

    combined = on["fisher"]
    assert combined.keys() == prior.keys()
    rounding = 2**-8  # the Fisher is kept in bfloat16: 8 bits of mantissa
    for key, tensor in combined.items():
        assert torch.all(tensor >= 0.9 * prior[key] * (1 - rounding)), key  # γ·F_prior + F_new, with F_new ≥ 0
    assert any(torch.any(combined[k] > 0.9 * prior[k] * (1 + rounding)) for k in combined)
    record = json.loads((Path(on["done"]["final_dir"]).parent / "eval.json").read_text())
    assert record["fisher_combined_with_prior"] is True


def test_a_bad_spec_is_one_error_line_and_exit_1(base_spec, tmp_path):
    _, job = _spec_at(base_spec, tmp_path, method="prefix", train_file=str(tmp_path / "missing.jsonl"))
    rc, events, _ = run(job)
    assert rc == 1
    (error,) = events
    assert error["event"] == "error"
    assert "method must be one of" in error["message"] and "missing.jsonl does not exist" in error["message"]


# ---------------------------------------------------------------- the data path, in process (no trainer run)


def test_the_loss_is_on_assistant_tokens_only_turn_markers_included(demo_base):
    from memwarden.training.data import IGNORE, encode
    from memwarden.training.model import load_tokenizer

    tok = load_tokenizer(demo_base)
    messages = [
        {"role": "system", "content": "You remember what matters."},
        {"role": "user", "content": "Who is Mira?"},
        {"role": "assistant", "content": "Your sister."},
        {"role": "user", "content": "Where does she live?"},
        {"role": "assistant", "content": "In Lisbon."},
    ]
    example, truncated = encode(tok, messages, 256)
    assert not truncated and example.input_ids[0] == tok.bos_token_id
    learnt = [t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab != IGNORE]
    assert tok.decode(learnt) == "Your sister.<|eot|>In Lisbon.<|eot|>"  # the end of turn too: it learns to stop
    assert example.n_targets == len(learnt)
    assert all(lab in (IGNORE, t) for t, lab in zip(example.input_ids, example.labels, strict=True))

    cut, truncated = encode(tok, messages, 40)
    assert truncated and len(cut) == 40 and 0 < cut.n_targets < example.n_targets
    none, truncated = encode(tok, messages, 10)  # nothing of an assistant turn survives
    assert none is None and truncated


def test_bad_lines_are_named_by_file_and_line(tmp_path):
    from memwarden.training.data import DataError, read_conversations

    good = _conversation("q", "a")
    for bad, why in (
        ("{not json", "not JSON"),
        ('{"messages": []}', "non-empty 'messages'"),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "messages[0] must be"),
        ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ):
        path = tmp_path / "train.jsonl"
        path.write_text(f"{good}\n\n{bad}\n")
        with pytest.raises(DataError, match=rf"train\.jsonl:3: .*{re.escape(why)}"):
            read_conversations(path)


def test_the_order_is_a_seeded_permutation_per_epoch():
    from memwarden.training.data import Order

    order = Order(10, seed=42)
    first, second = order.indices(0, 10), order.indices(10, 10)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert order.indices(7, 6) == first[7:] + second[:3]  # a step across the epoch boundary
    assert Order(10, seed=42).indices(0, 20) == first + second
    assert Order(10, seed=43).indices(0, 10) != first


def test_on_the_sim_gpu_the_trainer_books_its_own_memory(base_spec, tmp_path):
    from memwarden.gpu import simfile
    from memwarden.learning.jobspec import SimGpu

    sim = tmp_path / "gpu.json"
    simfile.create(sim, [{"index": 0, "name": "Sim 12G", "total_bytes": 12 * 1024**3}])
    _, job = _spec_at(base_spec, tmp_path, dry_run_steps=1, sim_gpu=SimGpu(str(sim), 0, 2 * 1024**3))
    trainer = Trainer(job)
    trainer.until(lambda e: e["event"] == "start")
    booked = simfile.read(sim)["gpus"][0]["processes"]
    assert booked == [{"pid": trainer.proc.pid, "used_bytes": 2 * 1024**3}]
    assert_done(*trainer.finish())


def test_a_sim_gpu_that_cannot_be_booked_is_one_error_line(base_spec, tmp_path):
    from memwarden.learning.jobspec import SimGpu

    _, job = _spec_at(base_spec, tmp_path, sim_gpu=SimGpu(str(tmp_path / "absent.json"), 0, 1))
    rc, events, _ = run(job)
    assert rc == 1 and of(events, "error")[0]["message"].startswith("cannot book the sim GPU: ")
    assert of(events, "start") == []
