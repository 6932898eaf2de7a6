"""A run's state machine, through the supervisor facade, with a fake executor: no torch, no trainer process."""

from __future__ import annotations

import json

import pytest

from memwarden.learning.jobspec import EXIT_FAILED, EXIT_PREEMPTED, SimGpu
from memwarden.learning.systemd_executor import EXIT_OOM_KILLED
from memwarden.snapshots import HostSnapshot

from .conftest import FakeArbiter, Script, finished, remember


def crash(message: str) -> Script:
    return Script(EXIT_FAILED, events=[{"event": "step", "step": 1, "loss": 2.0},
                                       {"event": "error", "message": message}])


async def test_a_finished_run_is_promoted_and_its_memories_consolidated(make, store, tmp_path):
    sup, executor = make(Script(events=[{"event": "start", "steps": 24}, {"event": "step", "step": 1, "loss": 2.0}]))
    remember(store)
    started = sup.start("alice")
    assert (started["state"], started["trigger"]) == ("queued", "manual")
    run = await finished(sup)
    assert run["state"] == "promoted" and run["version"] == 1 and run["promoted"] == 1
    assert run["eval"]["holdout_loss_before"] == 2.0 and run["eval"]["holdout_loss_after"] == 1.0
    assert [(v["adapter"], v["version"], v["active"]) for v in sup.status()["versions"]] == [("alice", 1, 1)]
    assert (tmp_path / "state" / "adapters" / "alice" / "v1" / "adapter_model.safetensors").is_file()
    learned = json.loads(sup.run(run["id"])["memory_ids"])
    assert learned and store.unconsolidated_importance().get("alice", {}).get("count", 0) == 10 - len(learned)
    assert executor.orphans_stopped == 1 and sup.current is None
    assert executor.requests[0].gpu is None and executor.requests[0].spec.sim_gpu is None  # device cpu: no lease


async def test_the_dry_run_goes_first_once_then_the_real_run(make, store, tmp_path):
    sup, executor = make(Script(), Script(), dry_run_steps=2)
    remember(store)
    run_id = sup.start("alice")["id"]
    assert (await finished(sup))["state"] == "promoted"
    dry, real = (r.spec for r in executor.requests)
    out = tmp_path / "state" / "runs" / run_id
    assert (dry.output_dir, dry.dry_run_steps) == (str(out / "dry"), 2)
    assert (real.output_dir, real.dry_run_steps) == (str(out), 0)
    assert [r.spec_file.name for r in executor.requests] == ["dry.json", "job.run.json"]
    assert (out / "dry_run.ok").exists() and not (out / "dry").exists()


async def test_a_run_that_did_not_recall_is_rejected_and_makes_no_version(make, store):
    sup, _ = make(Script(recalled=30))
    remember(store)
    sup.start("alice")
    run = await finished(sup)
    assert run["state"] == "rejected"
    assert run["reason"] == "recalled 30/40 (75%) of this run's memories, below learning.min_recall 90%"
    assert sup.status()["versions"] == []
    assert store.unconsolidated_importance()["alice"]["count"] == 10


async def test_a_preempted_trainer_leaves_the_run_preempted_to_resume(make, store):
    sup, executor = make(Script(EXIT_PREEMPTED), Script())
    remember(store)
    run_id = sup.start("alice")["id"]
    assert (await finished(sup))["state"] == "preempted"
    assert sup.status()["pending"] == [run_id]
    await sup.tick()  # the next pass relaunches it, from the same spec
    assert (await finished(sup))["state"] == "promoted"
    assert executor.requests[0].spec == executor.requests[1].spec


async def test_three_crashes_fail_the_run_with_the_trainers_own_error_line(make, store):
    sup, executor = make(crash("a"), crash("b"), crash("No space left on device (os error 28)"))
    remember(store)
    sup.start("alice")
    run = await finished(sup)
    assert run["state"] == "failed" and run["finished_at"] is not None
    assert run["error"] == ("RuntimeError: trainer failed 3 times (last exit 1): "
                            "No space left on device (os error 28)")
    assert len(executor.jobs) == 3
    [alert] = [c for c in sup.conditions() if c.kind == "training.failed"]
    assert alert.key == "alice" and "No space left on device" in alert.message


async def test_two_crashes_then_success_is_promoted_and_clears_the_alert(make, store):
    sup, executor = make(crash("a"), crash("b"), Script())
    remember(store)
    sup.start("alice")
    assert (await finished(sup))["state"] == "promoted" and len(executor.jobs) == 3
    assert sup.conditions() == []


async def test_a_crash_without_an_error_line_quotes_the_trainers_log(make, store, tmp_path):
    sup, _ = make(Script(EXIT_FAILED), Script(EXIT_FAILED), Script(EXIT_FAILED))
    remember(store)
    run_id = sup.start("alice")["id"]
    (tmp_path / "state" / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    (tmp_path / "state" / "runs" / run_id / "trainer.log").write_text("Traceback ...\nKeyError: 'x'\n")
    run = await finished(sup)
    assert run["error"].endswith("(last exit 1): Traceback ...\nKeyError: 'x'")


async def test_the_daemon_stopping_interrupts_the_run_to_resume_after_the_restart(make, store):
    sup, executor = make(Script(hold=True, events=[{"event": "start", "steps": 24},
                                                   {"event": "step", "step": 1, "loss": 2.0, "tokens_per_s": 9.0}]))
    remember(store)
    run_id = sup.start("alice")["id"]
    await executor.started.wait()
    await executor.jobs[0].emitted.wait()
    status = sup.status()["current"]
    assert (status["run_id"], status["state"], status["steps_seen"], status["trainer_pid"]) == (
        run_id, "running", 1, 4000)
    await sup.close()
    assert executor.jobs[0].preempted.is_set()  # asked to checkpoint first
    assert sup.run(run_id)["state"] == "interrupted" and sup.current is None
    await sup.tick()
    assert sup.task.done(), "a closing supervisor starts nothing"


async def test_cancel_checkpoints_and_marks_the_run_cancelled(make, store):
    sup, executor = make(Script(hold=True))
    remember(store)
    run_id = sup.start("alice")["id"]
    await executor.started.wait()
    with pytest.raises(RuntimeError, match="no run of bob"):
        await sup.cancel("bob")
    with pytest.raises(RuntimeError, match=f"a run is in progress \\({run_id}\\)"):
        sup.start("alice")
    reply = await sup.cancel("alice")
    assert reply["state"] == "cancelled" and reply["finished_at"] is not None
    assert sup.status()["pending"] == []


async def test_cancel_is_logged_and_recorded_as_a_cancel_not_a_preemption(make, store):
    from structlog.testing import capture_logs

    sup, executor = make(Script(hold=True, on_stop=[{"event": "preempted", "step": 3}]))  # as the trainer says
    remember(store)
    run_id = sup.start("alice")["id"]
    await executor.started.wait()
    with capture_logs() as logs:
        reply = await sup.cancel("alice")
    said = [e["event"] for e in logs]
    assert "training run cancelled by an operator; its checkpoint is kept" in said
    assert "trainer: stopped for a cancel" in said
    assert not [e for e in said if "preempt" in e], said
    assert reply["state"] == "cancelled" and sup.run(run_id)["state"] == "cancelled"


async def test_a_refused_lease_leaves_the_run_waiting(make, store):
    arbiter = FakeArbiter(refuse="no room: 1 GiB free")
    sup, executor = make(arbiter=arbiter, backend="sim", device="auto", lease_size="2GiB")
    remember(store)
    run_id = sup.start("alice")["id"]
    assert (await finished(sup))["state"] == "waiting"
    assert executor.jobs == [] and sup.status()["pending"] == [run_id]


GiB = 1024**3
PIN = "model big:7b 6.0 GiB, pinned"


def refused_run(make, store, *scripts, **learning):
    """A run on the sim GPU whose lease is refused by a pinned model; the monotonic clock in the test's hand."""
    arbiter = FakeArbiter(refuse="cannot lease 2.0 GiB on any GPU", holders=(PIN,))
    sup, executor = make(*scripts, arbiter=arbiter, backend="sim", device="auto", lease_size="2GiB", **learning)
    mono = [500.0]
    sup.execution.monotonic = lambda: mono[0]
    remember(store)
    return sup, executor, arbiter, mono


async def test_a_run_refused_past_gpu_wait_is_blocked_and_alerted_until_it_gets_its_lease(make, store):
    sup, executor, arbiter, mono = refused_run(make, store, Script(), gpu_wait="2s")
    run_id = sup.start("alice")["id"]
    assert (await finished(sup))["state"] == "waiting"
    assert sup.conditions() == []
    [wait] = sup.status()["waiting_runs"]
    assert (wait["run_id"], wait["action"], wait["holders"]) == (run_id, "wait", [PIN])
    mono[0] += 2
    await sup.tick()
    assert (await finished(sup))["state"] == "waiting"
    [alert] = sup.conditions()
    assert (alert.kind, alert.key, alert.severity) == ("training.blocked", "alice", "warning")
    assert PIN in alert.message and "2s" in alert.message
    assert sup.status()["waiting_runs"][0]["action"] == "blocked"
    arbiter.refuse = None  # the pin is lifted
    await sup.tick()
    assert (await finished(sup))["state"] == "promoted"
    assert sup.conditions() == [] and sup.status()["waiting_runs"] == []
    assert executor.requests[0].gpu == 0


async def test_with_cpu_fallback_a_run_past_gpu_wait_trains_on_the_cpu_niced(make, store):
    sup, executor, arbiter, mono = refused_run(make, store, Script(), gpu_wait="2s", cpu_fallback=True)
    sup.execution.host = lambda: HostSnapshot(0.0, 64 * GiB, 60 * GiB, 0, 0, None)
    sup.start("alice")
    assert (await finished(sup))["state"] == "waiting"
    mono[0] += 2
    await sup.tick()
    assert (await finished(sup))["state"] == "promoted"
    [request] = executor.requests
    assert request.gpu is None and request.spec.sim_gpu is None and request.spec.device == "cpu"
    assert request.spec.nice == 10 and request.spec.cpu_threads >= 1
    assert arbiter.acquired == [] and sup.conditions() == []


async def test_a_cpu_run_on_a_tight_host_trains_with_a_smaller_micro_batch_and_the_same_effective_batch(make, store):
    sup, executor, _, _ = refused_run(make, store, Script(), gpu_wait="0s", cpu_fallback=True, micro_batch=4,
                                      grad_accum=4)
    # 16 GiB, 85 % warns at 13.6 GiB: 12 GiB used + 1 GiB of weights + 1 GiB of activations is past it,
    # with half the activations (a micro-batch of 2) it is not.
    sup.execution.host = lambda: HostSnapshot(0.0, 16 * GiB, 4 * GiB, 0, 0, None)
    sup.start("alice")
    assert (await finished(sup))["state"] == "promoted"
    [request] = executor.requests
    assert request.spec.device == "cpu"
    assert (request.spec.hyper.micro_batch, request.spec.hyper.grad_accum) == (2, 8)


async def cpu_run_holding(make, store, **learning):
    """A run fallen back to the CPU, its trainer running (held until stopped)."""
    sup, executor, arbiter, _ = refused_run(make, store, Script(hold=True), Script(), gpu_wait="0s",
                                               cpu_fallback=True, **learning)
    sup.execution.host = lambda: HostSnapshot(0.0, 64 * GiB, 60 * GiB, 0, 0, None)
    sup.start("alice")
    await executor.started.wait()
    await executor.jobs[0].emitted.wait()
    assert executor.requests[0].gpu is None and sup.status()["current"]["cpu_fallback"]
    return sup, executor, arbiter


async def test_a_cpu_run_moves_to_the_gpu_at_a_checkpoint_once_the_lease_is_granted(make, store, tmp_path):
    sup, executor, arbiter = await cpu_run_holding(make, store)
    cpu_job = executor.jobs[0]
    cpu_job.on_event({"event": "checkpoint", "step": 4})  # still refused: it stays on the CPU
    await sup.execution._moving
    assert not cpu_job.preempted.is_set() and arbiter.acquired == []
    arbiter.refuse = None  # the pin is lifted
    cpu_job.on_event({"event": "checkpoint", "step": 8})
    assert (await finished(sup))["state"] == "promoted"
    assert cpu_job.preempted.is_set(), "the CPU trainer was stopped at its checkpoint"
    gpu_request = executor.requests[1]
    assert gpu_request.gpu == 0 and gpu_request.spec.sim_gpu is not None
    assert (gpu_request.spec.nice, gpu_request.spec.cpu_threads) == (0, None)
    assert gpu_request.spec.hyper == executor.requests[0].spec.hyper  # a roomy host: the configured batch
    assert gpu_request.spec.output_dir == executor.requests[0].spec.output_dir, "it resumes the same checkpoints"
    assert arbiter.released == ["L1"] and sup.execution.handover is None


async def test_without_cpu_to_gpu_a_cpu_run_stays_on_the_cpu(make, store):
    sup, executor, arbiter = await cpu_run_holding(make, store, cpu_to_gpu=False)
    arbiter.refuse = None
    executor.jobs[0].on_event({"event": "checkpoint", "step": 4})
    assert sup.execution._moving is None and arbiter.acquired == []
    await sup.cancel("alice")
    assert len(executor.requests) == 1


async def test_a_cpu_run_cancelled_while_its_move_is_granted_releases_the_lease(make, store):
    sup, executor, arbiter = await cpu_run_holding(make, store)
    arbiter.refuse = None
    sup.current.cancelling = True  # as cancel() marks it, before the checkpoint's move is decided
    executor.jobs[0].on_event({"event": "checkpoint", "step": 4})
    await sup.execution._moving
    assert arbiter.released == ["L1"] and sup.execution.handover is None
    await sup.cancel("alice")
    assert sup.history(1)[0]["state"] == "cancelled" and len(executor.requests) == 1


async def test_a_cpu_run_that_would_cross_the_ram_warning_level_is_held_and_alerted(make, store):
    sup, executor, _, _ = refused_run(make, store, Script(), gpu_wait="0s", cpu_fallback=True)
    sup.execution.host = lambda: HostSnapshot(0.0, 16 * GiB, 3 * GiB, 0, 0, None)  # 81 % used + 2 GiB: 94 %
    sup.start("alice")
    assert (await finished(sup))["state"] == "waiting"
    assert executor.requests == []
    [alert] = sup.conditions()
    assert "not started on the CPU" in alert.message and "85% warning level" in alert.message
    assert sup.status()["waiting_runs"][0]["action"] == "held"


async def test_cancelling_a_waiting_run_ends_its_wait_and_its_alert(make, store):
    sup, _, _, _ = refused_run(make, store, gpu_wait="0s")
    run_id = sup.start("alice")["id"]
    assert (await finished(sup))["state"] == "waiting"
    assert [c.kind for c in sup.conditions()] == ["training.blocked"]
    assert (await sup.cancel("alice"))["state"] == "cancelled"
    assert sup.run(run_id)["state"] == "cancelled" and sup.conditions() == []
    await sup.tick()
    assert sup.task is None or sup.task.done(), "a cancelled run is not relaunched"


async def test_on_the_sim_gpu_the_trainer_books_its_lease_and_the_daemon_writes_no_sim_file(make, store, tmp_path):
    arbiter = FakeArbiter()
    sup, executor = make(Script(hold=True), arbiter=arbiter, backend="sim", device="auto", lease_size="2GiB")
    remember(store)
    run_id = sup.start("alice")["id"]
    await executor.started.wait()
    request = executor.requests[0]
    assert request.gpu == 0
    assert request.spec.sim_gpu == SimGpu(str(tmp_path / "gpu.json"), 0, 2 * 1024**3)
    assert request.spec.device == "cpu"  # the sim GPU trains on the CPU
    assert sup.status()["current"]["lease"]["id"] == "L1"
    arbiter.preempt()  # the arbiter wants the VRAM back: the trainer is asked to checkpoint and stop
    assert (await finished(sup))["state"] == "preempted"
    assert arbiter.released == ["L1"] and sup.run(run_id)["started_at"] is not None
    assert not (tmp_path / "gpu.json").exists()


async def test_a_run_left_running_by_a_dead_daemon_is_interrupted_and_resumed(make, store):
    remember(store)
    first, _ = make()
    first.runs.insert("r-dead", "alice", "alice", "threshold", 0.0, "lora")
    first.runs.set_state("r-dead", "running")
    second, executor = make()
    assert second.run("r-dead")["state"] == "interrupted"
    await second.tick()
    assert (await finished(second))["state"] == "promoted"
    assert executor.orphans_stopped == 1 and executor.requests[0].spec.run_id == "r-dead"


async def test_the_first_tick_stops_orphans_even_with_learning_off(make):
    sup, executor = make(enabled=False)
    await sup.tick()
    await sup.execution.begin_open()
    await sup.tick()
    assert executor.orphans_stopped == 1 and sup.task is None


async def test_a_remote_executor_takes_no_lease_here_and_the_run_records_where_it_ran(make, store):
    sup, executor = make(Script(), backend="sim")
    executor.remote = True  # a cluster node's GPU: not this host's to lease
    remember(store)
    run_id = sup.start("alice")["id"]
    assert (await finished(sup))["state"] == "promoted"
    assert executor.requests[0].gpu is None and executor.requests[0].spec.sim_gpu is None
    assert (sup.run(run_id)["executor"], sup.run(run_id)["node"]) == ("fake", None)


async def test_a_trainer_killed_at_its_memory_max_is_retried_with_a_halved_micro_batch(make, store):
    sup, executor = make(Script(EXIT_OOM_KILLED), Script(), micro_batch=4, grad_accum=4)
    remember(store)
    sup.start("alice")
    assert (await finished(sup))["state"] == "promoted"
    first, retry = (r.spec.hyper for r in executor.requests)
    assert (first.micro_batch, first.grad_accum) == (4, 4)
    assert (retry.micro_batch, retry.grad_accum) == (2, 8)  # the same effective batch


async def test_a_dry_run_killed_at_its_memory_max_is_retried_with_a_halved_micro_batch(make, store):
    # The dry run goes first with the run's micro-batch, so it is where a cap too tight for it is met first.
    sup, executor = make(Script(EXIT_OOM_KILLED), Script(), Script(), micro_batch=4, grad_accum=4, dry_run_steps=2)
    remember(store)
    sup.start("alice")
    assert (await finished(sup))["state"] == "promoted"
    killed, dry, real = (r.spec for r in executor.requests)
    assert (killed.dry_run_steps, killed.hyper.micro_batch, killed.hyper.grad_accum) == (2, 4, 4)
    assert (dry.dry_run_steps, dry.hyper.micro_batch, dry.hyper.grad_accum) == (2, 2, 8)
    assert (real.dry_run_steps, real.hyper.micro_batch, real.hyper.grad_accum) == (0, 2, 8)


async def test_a_trainer_left_running_by_the_last_daemon_is_adopted_not_started(make, store):
    sup, executor = make()
    executor.adoptable = Script(events=[{"event": "step", "step": 9, "loss": 1.5}])
    remember(store)
    sup.start("alice")
    assert (await finished(sup))["state"] == "promoted"
    assert len(executor.adopted) == 1 and executor.jobs == executor.adopted  # no second trainer started


async def test_a_daemon_stopping_leaves_a_trainer_that_outlives_it_running(make, store):
    sup, executor = make(Script(hold=True))
    executor.outlives_daemon = True
    remember(store)
    run_id = sup.start("alice")["id"]
    await executor.started.wait()
    await executor.jobs[0].emitted.wait()
    await sup.close()
    assert not executor.jobs[0].preempted.is_set() and not executor.jobs[0].cancelled
    assert sup.run(run_id)["state"] == "interrupted"  # the next daemon resumes it, adopting the unit
