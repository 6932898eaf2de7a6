"""The subprocess executor's orphans: a trainer a dead daemon left behind is stopped without blocking the loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from memwarden.learning import executor as executor_mod
from memwarden.learning.executor import PID_FILE, SubprocessExecutor
from memwarden.learning.jobspec import JobSpec, SimGpu

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
                  "time.sleep(60)"


def orphan(run_dir, code="import time; print('up', flush=True); time.sleep(60)") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    run_dir.mkdir(parents=True)
    (run_dir / PID_FILE).write_text(str(proc.pid))
    return proc


async def test_an_orphan_is_terminated_and_its_pid_file_removed(tmp_path):
    proc = orphan(tmp_path / "runs" / "r1")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.get_running_loop().create_task(ticker())
    await asyncio.wait_for(SubprocessExecutor(tmp_path / "runs").stop_orphans(), 10)
    beat.cancel()
    assert proc.wait(5) == -15 and not (tmp_path / "runs" / "r1" / PID_FILE).exists()
    assert ticks > 0, "the loop kept running while the orphan stopped"


async def test_an_orphan_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(executor_mod, "ORPHAN_GRACE", 0.3)
    proc = orphan(tmp_path / "runs" / "r1", IGNORES_SIGTERM)
    await asyncio.wait_for(SubprocessExecutor(tmp_path / "runs").stop_orphans(), 10)
    assert proc.wait(5) == -9


async def test_a_stale_pid_file_is_removed(tmp_path):
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / PID_FILE).write_text("not a pid")
    await SubprocessExecutor(tmp_path / "runs").stop_orphans()
    await SubprocessExecutor(tmp_path / "absent").stop_orphans()
    assert not (tmp_path / "runs" / "r1" / PID_FILE).exists()


def test_the_sim_gpu_booking_travels_in_the_job_spec(tmp_path):
    spec = JobSpec("r1", "alice", "/base", "lora", "/out", "/t", "/h", sim_gpu=SimGpu("/run/gpu.json", 1, 2048))
    spec.write(tmp_path / "job.json")
    assert JobSpec.read(tmp_path / "job.json") == spec
    assert JobSpec.read(tmp_path / "job.json").sim_gpu.used_bytes == 2048
