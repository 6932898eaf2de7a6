"""The systemd executor over a fake UnitManager: units named per run, MemoryMax set before the start, progress
read from the run's file, exit status from unit_entry's record or from systemd's result, adoption after a
restart, and what a restarted daemon finds of a unit that ended unwatched."""

from __future__ import annotations

import asyncio
import json

import pytest

from memwarden.learning import systemd_executor
from memwarden.learning.executor import JobRequest
from memwarden.learning.jobspec import EXIT_FAILED, EXIT_PREEMPTED, JobSpec
from memwarden.learning.reattach import Trace
from memwarden.learning.systemd_executor import (
    EXIT_OOM_KILLED,
    MEMORY_FLOOR,
    PROGRESS_FILE,
    SystemdExecutor,
    UnitState,
    exit_code,
    memory_max,
    unit_name,
)

GiB = 1024**3


class FakeUnits:
    """Units that run until `finish()` is called; every call is recorded in order."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.states: dict[str, UnitState] = {}
        self.polled = asyncio.Event()

    async def set_memory_max(self, unit, nbytes):
        self.calls.append(("memory_max", unit, nbytes))

    async def start(self, unit):
        self.calls.append(("start", unit))
        self.states[unit] = UnitState("active", "success", 4242, 0)

    async def stop(self, unit):
        self.calls.append(("stop", unit))

    async def kill(self, unit, signal):
        self.calls.append(("kill", unit, signal))

    async def reset_failed(self, unit):
        self.calls.append(("reset_failed", unit))
        self.states.pop(unit, None)

    async def state(self, unit):
        self.polled.set()
        return self.states.get(unit)

    def finish(self, unit, state: UnitState | None):
        if state is None:
            self.states.pop(unit, None)
        else:
            self.states[unit] = state


def request(tmp_path, run_id="20261203-200000-ab12", gpu=0, ram=None) -> JobRequest:
    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    spec = JobSpec(run_id, "alice", "/base", "lora", str(run_dir), "/t", "/h")
    return JobRequest(spec, run_dir / "job.run.json", run_dir, gpu, ram_bytes=ram)


def executor(units, tmp_path) -> SystemdExecutor:
    return SystemdExecutor(units, lambda: 16 * GiB, GiB, launch_dir=tmp_path / "launch", poll=0)


def test_a_run_id_names_its_template_instance_and_nothing_else_does():
    assert unit_name("20261203-200000-ab12") == "memwarden-train@20261203-200000-ab12.service"
    for bad in ("", "a/b", "x.service", "a b", "../etc"):
        with pytest.raises(ValueError, match="cannot name a unit"):
            unit_name(bad)


def test_memory_max_keeps_out_of_the_host_reserve_and_follows_the_run_size():
    assert memory_max(16 * GiB, GiB, None) == 15 * GiB
    assert memory_max(16 * GiB, GiB, 4 * GiB) == 6 * GiB
    assert memory_max(16 * GiB, GiB, 40 * GiB) == 15 * GiB
    assert memory_max(16 * GiB, GiB, 1) == MEMORY_FLOOR
    assert memory_max(GiB, 2 * GiB, None) == MEMORY_FLOOR


def test_the_exit_status_prefers_the_trainers_own_record():
    assert exit_code(UnitState("failed", "oom-kill", 0, 9), None) == EXIT_OOM_KILLED
    assert exit_code(UnitState("failed", "oom-kill", 0, 9), EXIT_OOM_KILLED) == EXIT_OOM_KILLED
    assert exit_code(UnitState("inactive", "success", 0, 0), EXIT_PREEMPTED) == EXIT_PREEMPTED
    assert exit_code(UnitState("failed", "exit-code", 0, 3), None) == 3
    assert exit_code(UnitState("failed", "signal", 0, 0), None) == EXIT_FAILED


async def test_a_job_gets_its_memory_max_before_its_unit_starts_and_its_launch_file(tmp_path):
    units = FakeUnits()
    req = request(tmp_path, ram=4 * GiB)
    job = await executor(units, tmp_path).start(req, lambda e: None)
    unit = "memwarden-train@20261203-200000-ab12.service"
    assert units.calls == [("memory_max", unit, 6 * GiB), ("start", unit)]
    launch = json.loads((tmp_path / "launch" / "20261203-200000-ab12.json").read_text())
    assert launch == {"spec": str(req.spec_file), "progress": str(req.run_dir / PROGRESS_FILE), "gpu": 0}
    assert JobSpec.read(req.spec_file) == req.spec
    assert job.placement.unit == unit and job.placement.outlives_daemon


async def test_progress_is_streamed_and_the_exit_record_gives_the_code(tmp_path):
    units = FakeUnits()
    req = request(tmp_path)
    events = []
    job = await executor(units, tmp_path).start(req, events.append)
    unit = job.unit
    progress = req.run_dir / PROGRESS_FILE
    waiting = asyncio.get_running_loop().create_task(job.wait())
    await units.polled.wait()
    progress.write_text(json.dumps({"event": "step", "step": 1}) + "\nnot json\n" + '{"event": "chec')
    units.polled.clear()
    await units.polled.wait()
    assert events == [{"event": "step", "step": 1}]
    with progress.open("a") as f:
        f.write('kpoint", "step": 1}\n' + json.dumps({"event": "unit_exit", "code": EXIT_PREEMPTED}) + "\n")
    units.finish(unit, None)  # ended well and unloaded: only the record knows its status
    assert await waiting == EXIT_PREEMPTED
    assert events[-1] == {"event": "checkpoint", "step": 1} and job.last_event == events[-1]
    assert job.placement.pid == 4242


async def test_the_wait_ends_at_the_trainers_exit_record_not_at_the_next_look_at_the_unit(tmp_path):
    units = FakeUnits()
    slow = SystemdExecutor(units, lambda: 16 * GiB, GiB, launch_dir=tmp_path / "launch", poll=3600)
    req = request(tmp_path)
    job = await slow.start(req, lambda e: None)
    waiting = asyncio.get_running_loop().create_task(job.wait())
    await units.polled.wait()  # the first look: running; the next one is an hour away
    (req.run_dir / PROGRESS_FILE).write_text(json.dumps({"event": "unit_exit", "code": 0}) + "\n")
    units.finish(job.unit, None)
    assert await asyncio.wait_for(waiting, 30) == 0


async def test_an_oom_killed_unit_returns_the_oom_code_and_is_reset(tmp_path):
    units = FakeUnits()
    job = await executor(units, tmp_path).start(request(tmp_path), lambda e: None)
    units.finish(job.unit, UnitState("failed", "oom-kill", 0, 9))
    assert await job.wait() == EXIT_OOM_KILLED
    assert units.calls[-1] == ("reset_failed", job.unit)


async def test_preempt_and_cancel_signal_the_unit(tmp_path):
    units = FakeUnits()
    job = await executor(units, tmp_path).start(request(tmp_path), lambda e: None)
    job.preempt()
    job.cancel()
    units.finish(job.unit, None)
    await job.wait()
    assert [c for c in units.calls if c[0] == "kill"] == [("kill", job.unit, 15), ("kill", job.unit, 9)]


async def test_a_running_unit_is_adopted_with_its_progress_read_again(tmp_path):
    units = FakeUnits()
    req = request(tmp_path)
    unit = unit_name(req.spec.run_id)
    (req.run_dir / PROGRESS_FILE).write_text(json.dumps({"event": "step", "step": 7}) + "\n")
    ex = executor(units, tmp_path)
    assert await ex.adopt(req, lambda e: None) is None  # no unit: nothing to adopt
    units.states[unit] = UnitState("active", "success", 77, 0)
    events = []
    job = await ex.adopt(req, events.append)
    assert job is not None and job.placement.pid == 77
    assert not [c for c in units.calls if c[0] in ("start", "stop", "kill")], "an adopted unit is left running"
    units.finish(unit, None)
    with (req.run_dir / PROGRESS_FILE).open("a") as f:
        f.write(json.dumps({"event": "unit_exit", "code": 0}) + "\n")
    assert await job.wait() == 0 and events == [{"event": "step", "step": 7}]


async def test_stop_orphans_leaves_trainer_units_running(tmp_path):
    units = FakeUnits()
    await executor(units, tmp_path).stop_orphans()
    assert units.calls == []


async def test_find_reports_the_phases_unit_running_or_how_it_ended_and_only_until_its_end_is_seen(tmp_path):
    units = FakeUnits()
    ex = executor(units, tmp_path)
    req = request(tmp_path)
    assert await ex.find(req) == Trace("none")  # nothing launched
    job = await ex.start(req, lambda e: None)
    assert await ex.find(req) == Trace("running")
    other = JobRequest(req.spec, req.run_dir / "dry.json", req.run_dir, 0)
    assert await ex.find(other) == Trace("none")  # launched for another phase
    (req.run_dir / PROGRESS_FILE).write_text(json.dumps({"event": "unit_exit", "code": EXIT_FAILED}) + "\n")
    units.finish(job.unit, UnitState("failed", "exit-code", 0, EXIT_FAILED))
    found = await ex.find(req)
    assert (found.state, found.exit_code) == ("ended", EXIT_FAILED) and "failed, result exit-code" in found.detail
    await ex.forget(req)
    assert units.calls[-1] == ("reset_failed", job.unit) and await ex.find(req) == Trace("none")


async def test_find_falls_back_on_systemds_result_and_a_watched_end_leaves_nothing_to_find(tmp_path):
    units = FakeUnits()
    ex = executor(units, tmp_path)
    req = request(tmp_path)
    job = await ex.start(req, lambda e: None)
    units.finish(job.unit, UnitState("failed", "oom-kill", 0, 9))  # unit_entry itself killed: no exit record
    assert (await ex.find(req)).exit_code == EXIT_OOM_KILLED
    units.finish(job.unit, None)  # unloaded, no record: no status known
    assert (await ex.find(req)).exit_code is None
    units.finish(job.unit, UnitState("inactive", "success", 0, 0, started_at=1))  # it ran, and ended well
    assert await job.wait() == 0 and await ex.find(req) == Trace("none")


async def test_a_unit_that_still_reads_inactive_after_its_start_is_waited_for_not_taken_for_ended(tmp_path):
    units = FakeUnits()
    ex = executor(units, tmp_path)
    req = request(tmp_path)
    earlier = UnitState("inactive", "success", 0, 0, started_at=500)  # the dry run's invocation, still loaded
    units.states[unit_name(req.spec.run_id)] = earlier
    job = await ex.start(req, lambda e: None)
    units.states[job.unit] = earlier  # StartUnit has only queued the start
    waiting = asyncio.get_running_loop().create_task(job.wait())
    for _ in range(2):
        units.polled.clear()
        await units.polled.wait()
    assert not waiting.done() and job.launch.exists()  # the unit still has its launch file to read
    units.finish(job.unit, UnitState("inactive", "success", 0, 0, started_at=900))  # ran and ended between looks
    assert await asyncio.wait_for(waiting, 30) == 0 and not job.launch.exists()


async def test_a_unit_that_never_runs_after_its_start_is_given_up_on(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd_executor, "START_TIMEOUT", 0.0)
    units = FakeUnits()
    ex = executor(units, tmp_path)
    req = request(tmp_path)
    job = await ex.start(req, lambda e: None)
    units.finish(job.unit, UnitState("inactive", "success", 0, 0))  # queued, and never started
    assert await asyncio.wait_for(job.wait(), 30) == EXIT_FAILED
