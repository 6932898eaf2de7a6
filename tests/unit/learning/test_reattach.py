"""What a phase does with the trainer an earlier daemon left: the pure decision on what re-attach finds, then the
run's state machine (the supervisor with a fake executor) taking a trainer's unwatched exit as if watched."""

from __future__ import annotations

from memwarden.learning import execution
from memwarden.learning.eval_report import EvalReport, Losses
from memwarden.learning.jobspec import EXIT_DONE, EXIT_FAILED, EXIT_PREEMPTED
from memwarden.learning.reattach import DRY, NOTHING, RUN, START, TAKE, WATCH, Found, Trace, adapter_home, decide
from memwarden.learning.systemd_executor import EXIT_OOM_KILLED

from .conftest import Script, finished, remember

UNIT = "memwarden-train@r1.service failed, result exit-code"


def decided(phase=RUN, trace=NOTHING, home=False):
    d = decide(Found(phase, trace, home))
    return d.action, d.code


# ---- the decision ------------------------------------------------------------------------------------------------


def test_a_trainer_still_running_is_watched_whatever_its_directory_holds():
    assert decided(trace=Trace("running")) == (WATCH, None)
    assert decided(trace=Trace("running"), home=True) == (WATCH, None)
    assert decided(DRY, Trace("running")) == (WATCH, None)


def test_a_real_run_whose_adapter_and_report_are_in_place_is_taken_as_finished():
    # a child trainer that finished after its daemon died leaves no trace but its output
    assert decided(trace=NOTHING, home=True) == (TAKE, EXIT_DONE)
    assert decided(trace=Trace("ended", EXIT_DONE), home=True) == (TAKE, EXIT_DONE)
    assert decided(trace=Trace("ended", None, detail="unit unloaded"), home=True) == (TAKE, EXIT_DONE)


def test_a_finished_job_whose_adapter_is_elsewhere_is_re_attached_to_for_it():
    assert decided(trace=Trace("ended", EXIT_DONE, fetchable=True)) == (WATCH, None)


def test_a_finished_trainer_without_its_adapter_runs_again_and_a_dry_run_that_passed_is_taken():
    assert decided(trace=Trace("ended", EXIT_DONE)) == (START, None)
    assert decided(DRY, Trace("ended", EXIT_DONE)) == (TAKE, EXIT_DONE)
    assert decided(DRY, NOTHING, home=True) == (START, None)  # a dry run's pass is known by its exit alone


def test_a_failed_trainer_is_taken_with_its_exit_status_and_how_it_ended_in_the_reason():
    d = decide(Found(RUN, Trace("ended", EXIT_FAILED, detail=UNIT), False))
    assert (d.action, d.code) == (TAKE, EXIT_FAILED)
    assert "status 1" in d.reason and UNIT in d.reason
    assert decided(DRY, Trace("ended", EXIT_OOM_KILLED)) == (TAKE, EXIT_OOM_KILLED)
    assert d.log_fields()["decision"] == "training.reattach" and d.log_fields()["trace_exit_code"] == 1


def test_a_preempted_trainer_one_with_no_status_and_nothing_found_start_the_phase_again():
    assert decided(trace=Trace("ended", EXIT_PREEMPTED)) == (START, None)
    assert decided(trace=Trace("ended", None, detail="Ray job x FAILED: node died")) == (START, None)
    assert decided() == (START, None)
    assert not Found(RUN, NOTHING, False).anything and Found(RUN, NOTHING, True).anything


def test_only_this_runs_complete_report_means_its_adapter_is_home(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    report = EvalReport("r1", "alice", "lora", 24, str(out / "final"), Losses(2.0, 1.0))
    report.write(out)
    assert not adapter_home(out, "r1")  # eval.json without final/
    (out / "final").mkdir()
    assert adapter_home(out, "r1") and not adapter_home(out, "r2")
    (out / "eval.json").write_text('{"run_id": "r1", "adap')
    assert not adapter_home(out, "r1")


# ---- the run's state machine -------------------------------------------------------------------------------------


async def test_a_run_whose_trainer_finished_unwatched_is_judged_and_promoted_without_a_trainer(make, store):
    sup, executor = make()
    executor.left, executor.left_adapter = Trace("ended", EXIT_DONE, detail="unit unloaded"), 40
    remember(store)
    sup.start("alice")
    run = await finished(sup)
    assert (run["state"], run["version"]) == ("promoted", 1)
    assert executor.jobs == [] and len(executor.forgotten) == 1


async def test_a_run_that_finished_unwatched_below_its_recall_gate_is_rejected_as_if_watched(make, store):
    sup, executor = make()
    executor.left_adapter = 30
    remember(store)
    sup.start("alice")
    run = await finished(sup)
    assert run["state"] == "rejected" and run["reason"].startswith("recalled 30/40")
    assert executor.jobs == [] and sup.status()["versions"] == []


async def test_a_dry_run_that_passed_unwatched_is_not_run_again(make, store, tmp_path):
    sup, executor = make(Script(), dry_run_steps=2)
    executor.left = Trace("ended", EXIT_DONE, detail="unit unloaded")
    remember(store)
    run_id = sup.start("alice")["id"]
    assert (await finished(sup))["state"] == "promoted"
    assert [r.spec_file.name for r in executor.requests] == ["job.run.json"]
    assert (tmp_path / "state" / "runs" / run_id / "dry_run.ok").exists()


async def test_a_trainer_that_failed_unwatched_counts_as_an_attempt_of_the_run(make, store):
    sup, executor = make(Script(EXIT_FAILED), Script(EXIT_FAILED), Script(EXIT_FAILED))
    executor.left = Trace("ended", EXIT_FAILED, detail=UNIT)
    remember(store)
    sup.start("alice")
    run = await finished(sup)
    assert run["state"] == "failed" and f"failed {execution.MAX_ATTEMPTS} times" in run["error"]
    assert len(executor.jobs) == execution.MAX_ATTEMPTS - 1  # the unwatched failure was the first attempt


async def test_a_run_failed_on_its_unwatched_exit_says_that_exit_and_how_it_ended(make, store, monkeypatch):
    monkeypatch.setattr(execution, "MAX_ATTEMPTS", 1)
    sup, executor = make()
    executor.left = Trace("ended", EXIT_FAILED, detail=UNIT)
    remember(store)
    sup.start("alice")
    run = await finished(sup)
    assert run["state"] == "failed" and executor.jobs == []
    assert "last exit 1" in run["error"] and "status 1 unwatched" in run["error"] and UNIT in run["error"]


async def test_a_trainer_killed_at_its_memory_max_unwatched_is_retried_at_half_the_micro_batch(make, store):
    sup, executor = make(Script(), micro_batch=4, grad_accum=2)
    executor.left = Trace("ended", EXIT_OOM_KILLED, detail="memwarden-train@r1.service failed, result oom-kill")
    remember(store)
    sup.start("alice")
    assert (await finished(sup))["state"] == "promoted"
    (retry,) = executor.requests
    assert (retry.spec.hyper.micro_batch, retry.spec.hyper.grad_accum) == (2, 4)
