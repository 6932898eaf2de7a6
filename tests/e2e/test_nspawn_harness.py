"""The e2e harness itself, without booting anything: it waits for a real boot state, and no failure path leaves a
machine's processes behind (a container's systemd must never outlive its deleted root).

The machine here is a stand-in: a fake `systemd-nspawn` on PATH that starts a fake `systemd` in a session of its
own (as the real container's init is), which ignores SIGTERM and has a child; a fake `nsenter` answers
`systemctl is-system-running` with $FAKE_STATE."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support.nspawn import Machine, MachineError, await_boot

FAKE_NSPAWN = f"""#!{sys.executable}
import os, signal, subprocess, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # nspawn itself goes at once; its container need not
subprocess.Popen([os.environ["FAKE_SYSTEMD"]], start_new_session=True)
with open(os.environ["FAKE_PIDS"], "a") as f:
    f.write(f"{{os.getpid()}}\\n")
while True:
    time.sleep(60)
"""
FAKE_SYSTEMD = f"""#!{sys.executable}
import os, signal, subprocess, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a PID 1 that has not set up its handlers yet
child = subprocess.Popen(["sleep", "100000"])
with open(os.environ["FAKE_PIDS"], "a") as f:
    f.write(f"{{os.getpid()}}\\n{{child.pid}}\\n")
while True:
    time.sleep(60)
"""
# It answers once the whole machine is up (three pids written), so that no process is still being started when
# the harness gives up: what the test counts is then all there is.
FAKE_NSENTER = """#!/bin/sh
while [ "$(wc -l < "$FAKE_PIDS" 2>/dev/null || echo 0)" -lt 3 ]; do sleep 0.05; done
echo "$FAKE_STATE"
[ "$FAKE_STATE" = running ]
"""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def answers(*replies: str | None):
    """systemctl's answers in turn, the last one repeated; .asked counts the questions."""
    def ask() -> str | None:
        ask.asked += 1
        return replies[min(ask.asked, len(replies)) - 1]
    ask.asked = 0
    return ask


def test_offline_and_no_answer_mean_ask_again_until_running():
    clock = Clock()
    ask = answers(None, "offline", "offline", "", "initializing", "starting", "running")
    assert await_boot(ask, timeout=60, clock=clock, sleep=clock.sleep) == "running"
    assert ask.asked == 7


def test_degraded_is_a_booted_machine():
    clock = Clock()
    assert await_boot(answers("offline", "degraded"), timeout=60, clock=clock, sleep=clock.sleep) == "degraded"


def test_offline_until_the_deadline_is_an_error_that_names_what_was_seen():
    clock = Clock()
    ask = answers(None, "offline")
    with pytest.raises(MachineError, match=r"no running or degraded state within 30s.*'offline'"):
        await_boot(ask, timeout=30, interval=0.5, clock=clock, sleep=clock.sleep)
    assert clock.now >= 30 and ask.asked >= 60


@pytest.mark.parametrize("final", ["maintenance", "stopping"])
def test_a_final_state_other_than_running_ends_the_wait_at_once(final):
    clock = Clock()
    ask = answers("starting", final)
    with pytest.raises(MachineError, match=f"boot ended in state '{final}'"):
        await_boot(ask, timeout=60, clock=clock, sleep=clock.sleep)
    assert ask.asked == 2


@pytest.fixture
def fake_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(a base rootfs, the file where the fakes write their pids); whatever is left is killed afterwards."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("systemd-nspawn", FAKE_NSPAWN), ("systemd", FAKE_SYSTEMD), ("nsenter", FAKE_NSENTER)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    pids = tmp_path / "pids"
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SYSTEMD", str(bindir / "systemd"))
    monkeypatch.setenv("FAKE_PIDS", str(pids))
    yield base, pids
    for pid in started(pids):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def started(pids: Path) -> list[int]:
    return [int(p) for p in pids.read_text().split()] if pids.exists() else []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_failed_boot_leaves_no_process_and_no_files_behind(fake_machine, monkeypatch):
    base, pids = fake_machine
    # The answer comes once the machine is up, and ends the boot at once: no deadline races the fakes' start.
    monkeypatch.setenv("FAKE_STATE", "maintenance")
    machine = Machine(base)
    with pytest.raises(MachineError, match="boot ended in state 'maintenance'"), machine:
        pytest.fail("the machine booted")
    assert len(started(pids)) == 3  # nspawn, its systemd, and that one's child
    assert [pid for pid in started(pids) if alive(pid)] == []
    assert not machine.dir.exists()


def test_a_failure_inside_the_machine_s_block_still_kills_all_of_it(fake_machine, monkeypatch):
    base, pids = fake_machine
    monkeypatch.setenv("FAKE_STATE", "running")
    with pytest.raises(RuntimeError, match="a test failed"), Machine(base) as machine:
        assert machine.leader in started(pids)
        raise RuntimeError("a test failed")
    assert len(started(pids)) == 3
    assert [pid for pid in started(pids) if alive(pid)] == []
    assert not machine.dir.exists()
