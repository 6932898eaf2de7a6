"""The whole learning cycle under the real daemon: memories imported past the threshold → a run scheduled →
the trainer subprocess trains (real torch on CPU, the tiny demo model) under a preemptible lease on the sim
GPU → evaluated → promoted → exported into the Ollama double → memories consolidated, once; and a run the GPU
is refused to (a pinned model fills it): blocked and alerted past learning.gpu_wait, or trained on the CPU."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess

import pytest

from support.daemon import BIN
from support.learning_daemon import RUN_TIMEOUT, GiB, ctl, runs, wait_for_run
from support.memories import FACTS
from support.ollama_double.manager import wait_until

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft", "bitsandbytes")),
    reason="the train extra (torch, transformers, peft, bitsandbytes) is not installed",
)


def memories_file(path, profile, importance=5, repeat=2):
    lines = []
    for i in range(repeat):
        for kind, content, response in FACTS:
            lines.append(json.dumps({"profile": profile, "kind": kind, "content": f"{content} ({i})" if i else content,
                                     "response": response, "importance": importance}))
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def consolidated(d):
    return [m for m in d.call("memories.list", {"limit": 1000})["memories"] if m["consolidated_run"]]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_memories_past_the_threshold_become_a_promoted_exported_adapter(learning, tmp_path, method):
    d, double = learning({"learning": {"method": method}})
    n = memories_file(tmp_path / "alice.jsonl", "alice")
    imported = ctl(d, "memories", "import", str(tmp_path / "alice.jsonl"))
    assert imported.returncode == 0, imported.stderr

    run = wait_for_run(d)
    assert run["state"] == "promoted", run
    assert run["trigger"] == "threshold" and run["adapter"] == "alice"
    assert run["eval"]["holdout_loss_after"] < run["eval"]["holdout_loss_before"]
    # Recall of the run's own memories, in train history's JSON: every trained memory decoded (under
    # learning.recall_sample), with a token accuracy; no earlier round, so no probe.
    ev = run["eval"]
    assert ev["recall_memories"] > 0 and 0 <= ev["recall_recalled"] <= ev["recall_memories"]
    assert ev["recall"] == ev["recall_recalled"] / ev["recall_memories"]
    assert 0 <= ev["recall_token_accuracy"] <= 1
    assert ev["probe_recall_after_memories"] == 0 and ev["probe_recall_after"] is None

    status = d.call("train.status")
    assert [(v["adapter"], v["version"], v["active"]) for v in status["versions"]] == [("alice", 1, 1)]
    assert status["versions"][0]["recall_memories"] == ev["recall_memories"]
    assert f"{ev['recall_recalled']}/{ev['recall_memories']} (acc" in ctl(d, "train", "history").stdout
    learned = consolidated(d)
    assert learned and all(m["consolidated_run"] == run["id"] for m in learned)
    assert len(learned) <= n
    # The run trained under a preemptible lease on the (sim) GPU, released when it ended.
    leases = d.call("lease.list")
    assert leases["active"] == []
    assert any(x["holder"].startswith("training alice") and x["preemptible"] for x in leases["recent"])
    # Exported: the adapter alone, as a versioned model and a stable alias. The export follows the promotion's
    # commit, so a run reads "promoted" a moment before Ollama has the model.
    wait_until(lambda: any(e.get("event") == "adapter exported to Ollama" for e in d.log_events()),
               timeout=RUN_TIMEOUT, interval=0.2, message="the export to Ollama")
    names = {m["name"] for m in double.tags()}
    assert {"memwarden/alice:v1", "memwarden/alice:latest"} <= names
    version_dir = d.workdir / "state" / "adapters" / "alice" / "v1"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "fisher.safetensors"]


def test_a_bad_import_line_imports_nothing_and_starts_nothing(learning, tmp_path):
    d, _ = learning()
    memories_file(tmp_path / "m.jsonl", "alice")
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"importance": 5', '"importance": 11')
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    out = ctl(d, "memories", "import", str(tmp_path / "m.jsonl"))
    assert out.returncode == 1 and "line 4" in (out.stdout + out.stderr)
    assert d.call("memories.count")["total"] == 0
    assert runs(d) == []


def test_preemption_checkpoints_releases_the_lease_and_resumes(learning, tmp_path):
    d, _ = learning({"learning": {"max_steps": 60, "dry_run_steps": 0}})
    memories_file(tmp_path / "m.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "m.jsonl")).returncode == 0
    lease = wait_until(lambda: next(iter(d.call("lease.list")["active"]), None), timeout=RUN_TIMEOUT, interval=0.2,
                       message="the training lease")
    wait_until(lambda: (d.call("train.status")["current"] or {}).get("steps_seen", 0) >= 2, timeout=RUN_TIMEOUT,
               interval=0.2, message="training steps")
    d.call("lease.preempt", {"id": lease["id"]})
    preempted = wait_until(lambda: next((e for e in d.log_events() if e.get("event") == "trainer: preempted"), None),
                           timeout=60, message="the trainer's preempted event")
    assert preempted["checkpoint"]
    wait_until(lambda: all(x["id"] != lease["id"] for x in d.call("lease.list")["active"]), timeout=30,
               message="the preempted lease released")
    run = wait_for_run(d)
    assert run["state"] == "promoted"
    resumed = [e for e in d.log_events() if e.get("event") == "trainer exited"]
    assert [e["code"] for e in resumed if not e["dry_run"]][:2] == [75, 0]


def test_killing_the_daemon_mid_run_loses_nothing_and_trains_nothing_twice(learning, tmp_path):
    d, _ = learning({"learning": {"max_steps": 60, "dry_run_steps": 0}})
    memories_file(tmp_path / "m.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "m.jsonl")).returncode == 0
    wait_until(lambda: any(e.get("event") == "trainer: checkpoint" for e in d.log_events()), timeout=RUN_TIMEOUT,
               interval=0.2, message="a first checkpoint")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.start()
    run = wait_for_run(d)
    assert run["state"] == "promoted"
    all_runs = runs(d)
    assert [r["state"] for r in all_runs] == ["promoted"], "the interrupted run resumed; no second run"
    learned = consolidated(d)
    assert learned and {m["consolidated_run"] for m in learned} == {run["id"]}


def test_killing_the_trainer_resumes_from_its_checkpoint(learning, tmp_path):
    d, _ = learning({"learning": {"max_steps": 60, "dry_run_steps": 0}})
    memories_file(tmp_path / "m.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "m.jsonl")).returncode == 0
    wait_until(lambda: any(e.get("event") == "trainer: checkpoint" for e in d.log_events()), timeout=RUN_TIMEOUT,
               interval=0.2, message="a first checkpoint")
    pid = d.call("train.status")["current"]["trainer_pid"]
    os.kill(pid, signal.SIGKILL)
    run = wait_for_run(d)
    assert run["state"] == "promoted"
    exits = [e["code"] for e in d.log_events() if e.get("event") == "trainer exited"]
    assert exits == [-9, 0]


def conversations_file(path, profile, repeat=2):
    """Only the exchanges of FACTS (a content-only memory's prompt is generic: no round could recall them all),
    `repeat` times with numbered questions, importance 5 each."""
    lines = [json.dumps({"profile": profile, "kind": kind, "content": f"{content} ({i})" if i else content,
                         "response": response, "importance": 5})
             for i in range(repeat) for kind, content, response in FACTS if response]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


# Settings under which a round of a few exchanges reaches the default recall target in a few dozen steps. So high
# a learning rate on so few exchanges costs the base much of its general ability (the general-probe loss rises
# several-fold): these tests are of recall and forgetting, so the general check is off (general_epsilon 10);
# the gate's general check is tests/unit/learning/test_promotion.py's.
RECALLING = {"min_recall": 0.9, "lr": 1e-2, "rank": 8, "alpha": 16, "max_steps": 200, "recall_every": 5,
             "micro_batch": 4, "max_seq_len": 96, "dry_run_steps": 0, "checkpoint_steps": 50,
             "general_epsilon": 10.0}


def test_a_round_that_reaches_its_recall_target_stops_early_and_is_promoted(learning, tmp_path):
    d, _ = learning({"learning": RECALLING})
    conversations_file(tmp_path / "a.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "a.jsonl")).returncode == 0
    run = wait_for_run(d)
    ev = run["eval"]
    assert run["state"] == "promoted", (run["reason"], ev)
    assert ev["recall"] >= 0.9 and ev["stopped_early"] and ev["step"] < 200 and ev["step"] % 5 == 0
    assert run["reason"].startswith(f"recalled {ev['recall_recalled']}/{ev['recall_memories']} (")
    # the base's general probe, measured before and after, shown with the run and judged
    before, after = ev["general_loss_before"], ev["general_loss_after"]
    assert before > 0 and after > 0 and "general-probe loss" in run["reason"]
    assert f"{before:.3f}→{after:.3f}" in ctl(d, "train", "history").stdout
    checks = [e for e in d.log_events() if e.get("event") == "trainer: recall"]
    assert checks and checks[-1]["step"] == ev["step"] and checks[-1]["target"] == 0.9
    [decision] = [e for e in d.log_events() if e.get("decision") == "learning.promote"]
    assert decision["promote"] and decision["code"] == "promoted" and decision["general_loss_after"] == after


def test_a_round_that_cannot_learn_is_rejected_with_its_recall(learning, tmp_path):
    d, _ = learning({"learning": {**RECALLING, "lr": 1e-8, "max_steps": 10}})
    n = conversations_file(tmp_path / "a.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "a.jsonl")).returncode == 0
    run = wait_for_run(d)
    ev = run["eval"]
    assert run["state"] == "rejected", run
    assert not ev["stopped_early"] and ev["step"] == 10 and ev["recall"] < 0.9
    assert run["reason"] == (f"recalled {ev['recall_recalled']}/{ev['recall_memories']} ({ev['recall']:.0%}) of "
                             "this run's memories, below learning.min_recall 90%")
    assert d.call("train.status")["versions"] == [] and len(consolidated(d)) == 0 < n


def test_a_run_that_forgets_too_much_is_not_promoted(learning, tmp_path):
    # A first round of four memories, trained until it recalls them (as the round above), is promoted.
    d, _ = learning({"learning": {**RECALLING, "importance_threshold": 20, "recall_max_new_tokens": 32,
                                  "forgetting_epsilon": 0.0}})
    conversations_file(tmp_path / "a.jsonl", "alice", repeat=1)
    assert ctl(d, "memories", "import", str(tmp_path / "a.jsonl")).returncode == 0
    first = wait_for_run(d)
    assert first["state"] == "promoted" and first["eval"]["recall"] >= 0.9, (first["reason"], first["eval"])
    # New memories on unrelated text, learned hard: recall of the earlier ones must drop, and ε is 0.
    lines = [json.dumps({"profile": "alice", "kind": "journal", "importance": 10,
                         "content": f"Zebra quartz {i} vortex kelp {i * 7} umbra {i * 13}."}) for i in range(12)]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    sections = {k: dict(v) for k, v in d.sections.items()}
    sections["learning"].update(lr=2e-2, max_steps=40, ewc_lambda=0.0, replay_fraction=0.0, min_recall=0.0,
                                recall_every=0)  # the second is judged on what it forgot alone
    d.write_config(sections)
    assert d.call("config.reload")["reloaded"]
    assert ctl(d, "memories", "import", str(tmp_path / "b.jsonl")).returncode == 0
    second = wait_until(lambda: next((r for r in runs(d) if r["id"] != first["id"]
                                      and r["state"] in ("promoted", "rejected", "failed")), None),
                        timeout=RUN_TIMEOUT, interval=0.5, message="the second run")
    assert second["state"] == "rejected", second
    ev = second["eval"]
    probed, before, after = (ev["probe_recall_before_memories"], ev["probe_recall_before_recalled"],
                             ev["probe_recall_after_recalled"])
    assert probed > 0 and after < before
    assert second["reason"].startswith(f"forgot too much: earlier rounds recalled {before}/{probed} → "
                                       f"{after}/{probed} (−"), second["reason"]
    assert "more than learning.forgetting_epsilon 0.0%" in second["reason"]
    assert [v["version"] for v in d.call("train.status")["versions"] if v["active"]] == [1]
    new_ids = {m["id"] for m in d.call("memories.list", {"limit": 1000})["memories"] if "Zebra" in m["content"]}
    assert not any(m["id"] in new_ids for m in consolidated(d)), "a rejected run consolidates nothing"


def test_rollback_makes_the_previous_version_active(learning, tmp_path):
    d, _ = learning()
    memories_file(tmp_path / "a.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "a.jsonl")).returncode == 0
    assert wait_for_run(d)["state"] == "promoted"
    memories_file(tmp_path / "b.jsonl", "alice", repeat=3)
    assert ctl(d, "memories", "import", str(tmp_path / "b.jsonl")).returncode == 0
    wait_until(lambda: sum(r["state"] == "promoted" for r in runs(d)) == 2, timeout=RUN_TIMEOUT, interval=0.5,
               message="a second promoted run")
    out = ctl(d, "adapters", "rollback", "alice")
    assert out.returncode == 0 and "v1 active again (was v2)" in out.stdout
    assert [v["version"] for v in d.call("train.status")["versions"] if v["active"]] == [1]


def test_train_start_runs_now_and_full_fine_tune_clamps_the_learning_rate(learning, tmp_path):
    d, _ = learning({"learning": {"method": "full", "lr": 5e-6, "importance_threshold": 10_000}})
    memories_file(tmp_path / "a.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "a.jsonl")).returncode == 0
    assert runs(d) == [], "below the threshold nothing starts by itself"
    started = ctl(d, "train", "start", "alice")
    assert started.returncode == 0, started.stderr
    # `train watch` follows the run from pending to its end: its progress lines, then the final one.
    watched = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "train", "watch", "alice", "--json"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    run = wait_for_run(d)
    assert lines[-1] == {"run": run["id"], "adapter": "alice", "state": run["state"], "final": True,
                         "reason": run.get("error") or run.get("reason")}
    assert watched.returncode == (0 if run["state"] == "promoted" else 1), watched.stderr
    steps = [x for x in lines[:-1] if x.get("step") is not None]
    assert steps and all(x["steps"] and 0 < x["percent"] <= 100 for x in steps)
    assert all(a != b for a, b in itertools.pairwise(lines)), "one line per change of progress"
    assert run["trigger"] == "manual"
    clamps = [e for e in d.log_events() if e.get("event") == "trainer: clamp"]
    assert clamps and clamps[0]["requested"] == 5e-6 and clamps[0]["used"] == 1e-5
    assert d.call("diagnostics")["heavy_modules_loaded"] == []


BIG = "big:7b"
PINNED = f"model {BIG} 11.0 GiB, pinned"


def gpu_full_with_a_pinned_model(learning, host=None, **learning_keys):
    """The 12 GiB sim GPU holds an 11 GiB pinned model: a 2 GiB training lease is refused until it is unpinned."""
    d, double = learning({"learning": learning_keys, "host": host or {}},
                         models=[{"name": BIG, "size": 11 * GiB, "family": "llama"}])
    double.load(BIG)
    wait_until(lambda: any(m["name"] == BIG and m["resident"] for m in d.call("models.list")), timeout=30,
               message=f"{BIG} resident in the daemon's view")
    d.call("models.pin", {"name": BIG})
    return d, double


def blocked_alert(d):
    return next((a for a in d.call("alerts")["active"] if a["kind"] == "training.blocked"), None)


def test_a_run_refused_the_gpu_waits_then_raises_training_blocked_naming_the_pin(learning, tmp_path):
    d, _ = gpu_full_with_a_pinned_model(learning, gpu_wait="2s")
    memories_file(tmp_path / "alice.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "alice.jsonl")).returncode == 0

    alert = wait_until(lambda: blocked_alert(d), timeout=60, interval=0.3,
                       message=lambda: f"training.blocked; status: {d.call('train.status')}")
    assert alert["key"] == "alice" and alert["severity"] == "warning"
    assert PINNED in alert["message"] and alert["fields"]["waited_s"] >= 2
    [wait] = d.call("train.status")["waiting_runs"]
    assert wait["action"] == "blocked" and PINNED in wait["holders"]
    shown = ctl(d, "train", "status")
    assert shown.returncode == 0 and "blocked: waiting for the GPU past learning.gpu_wait" in shown.stdout
    assert PINNED in shown.stdout
    assert [r["state"] for r in runs(d)] == ["waiting"], "no trainer started while the GPU is held"

    d.call("models.unpin", {"name": BIG})  # now the lease may evict it: the run gets its GPU
    run = wait_for_run(d)
    assert run["state"] == "promoted", run
    wait_until(lambda: blocked_alert(d) is None, timeout=30, interval=0.3, message="training.blocked resolved")
    assert any(x["holder"].startswith("training alice") for x in d.call("lease.list")["recent"])


def test_with_cpu_fallback_a_run_refused_the_gpu_trains_on_the_cpu_and_is_promoted(learning, tmp_path):
    d, _ = gpu_full_with_a_pinned_model(learning, gpu_wait="2s", cpu_fallback=True)
    memories_file(tmp_path / "alice.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "alice.jsonl")).returncode == 0

    run = wait_for_run(d)
    assert run["state"] == "promoted", run
    assert d.call("lease.list")["recent"] == [], "the run never held a lease"
    spec = json.loads((d.workdir / "state" / "runs" / run["id"] / "job.run.json").read_text())
    assert spec["device"] == "cpu" and spec["sim_gpu"] is None and spec["nice"] == 10 and spec["cpu_threads"] >= 1
    assert any(e.get("event") == "decision: training run cpu" and PINNED in e.get("holders", ())
               for e in d.log_events())
    assert blocked_alert(d) is None


def test_a_cpu_run_that_would_cross_the_ram_warning_level_is_held_with_its_reason(learning, tmp_path):
    # Any CPU run crosses a 1 % warning level: the 2 GiB it needs are counted on top of what the host uses now.
    d, _ = gpu_full_with_a_pinned_model(learning, {"ram_warn_percent": 1, "ram_crit_percent": 2},
                                        gpu_wait="2s", cpu_fallback=True)
    memories_file(tmp_path / "alice.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "alice.jsonl")).returncode == 0

    alert = wait_until(lambda: blocked_alert(d), timeout=60, interval=0.3,
                       message=lambda: f"training.blocked; status: {d.call('train.status')}")
    assert "not started on the CPU" in alert["message"] and "1% warning level" in alert["message"]
    assert PINNED in alert["message"]
    [wait] = d.call("train.status")["waiting_runs"]
    assert wait["action"] == "held" and "host.ram_warn_percent" in wait["reason"]
    assert [r["state"] for r in runs(d)] == ["waiting"], "no trainer started"


def test_unpinning_mid_run_moves_a_cpu_run_to_the_gpu_at_its_next_checkpoint_no_step_lost(learning, tmp_path):
    d, _ = gpu_full_with_a_pinned_model(learning, gpu_wait="1s", cpu_fallback=True, max_steps=120, dry_run_steps=0)
    memories_file(tmp_path / "alice.jsonl", "alice")
    assert ctl(d, "memories", "import", str(tmp_path / "alice.jsonl")).returncode == 0
    cpu = wait_until(lambda: (c := d.call("train.status")["current"]) and c["cpu_fallback"] and c["steps_seen"] >= 2
                     and c, timeout=RUN_TIMEOUT, interval=0.2, message="the run training on the CPU")
    assert os.getpriority(os.PRIO_PROCESS, cpu["trainer_pid"]) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)

    d.call("models.unpin", {"name": BIG})
    run = wait_for_run(d)
    assert run["state"] == "promoted", run
    events = d.log_events()
    said = [e["event"] for e in events]
    assert "decision: a CPU run moves to the GPU at its checkpoint" in said
    assert "training run resumes on the GPU from its checkpoint" in said
    stopped = next(e for e in events if e.get("event") == "trainer: preempted")
    starts = [e for e in events if e.get("event") == "trainer: start"]
    assert [s["resumed_from_step"] for s in starts] == [0, stopped["step"]], "resumed at the step it stopped at"
    exits = [e["code"] for e in events if e.get("event") == "trainer exited"]
    assert exits == [75, 0]
    assert any(x["holder"].startswith("training alice") for x in d.call("lease.list")["recent"]), "on the GPU"
