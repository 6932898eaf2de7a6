"""The process table read from a fake /proc: parent, group and start time; zombies and junk left out."""

from __future__ import annotations

import os

from memwarden.arbiter import processes
from memwarden.policies.lease_procs import Proc


def stat_line(pid: int, comm: str, state: str, ppid: int, pgid: int, start: int) -> str:
    # pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime cutime
    # cstime priority nice num_threads itrealvalue starttime …
    rest = [ppid, pgid, pgid, 0, -1, 4194304, 0, 0, 0, 0, 1, 2, 0, 0, 20, 0, 1, 0, start, 12345, 67]
    return f"{pid} ({comm}) {state} " + " ".join(map(str, rest)) + "\n"


def add(root, pid, ppid, pgid, start, comm="python3", state="S"):
    (root / str(pid)).mkdir()
    (root / str(pid) / "stat").write_text(stat_line(pid, comm, state, ppid, pgid, start))


def test_parse_counts_fields_after_the_last_parenthesis():
    line = stat_line(42, "evil) S 1 1 (x", "S", 7, 42, 9999).encode()
    assert processes.parse_stat(42, line) == Proc(42, 7, 42, 9999)


def test_zombies_and_junk_are_not_processes():
    assert processes.parse_stat(5, stat_line(5, "gone", "Z", 1, 5, 10).encode()) is None
    assert processes.parse_stat(5, b"5 (short) S 1") is None
    assert processes.parse_stat(5, b"") is None


def test_scan_lineage_and_descent(tmp_path):
    add(tmp_path, 1, 0, 1, 1, "init")
    add(tmp_path, 100, 1, 100, 50, "bash")
    add(tmp_path, 200, 100, 200, 60)
    add(tmp_path, 300, 200, 300, 70)
    add(tmp_path, 400, 1, 400, 80, state="Z")
    (tmp_path / "self").mkdir()
    table = processes.scan(tmp_path)
    assert sorted(table) == [1, 100, 200, 300]
    assert sorted(processes.lineage([300], tmp_path)) == [1, 100, 200, 300]
    assert processes.descends_from(300, 100, tmp_path)
    assert processes.descends_from(200, 200, tmp_path)
    assert not processes.descends_from(100, 200, tmp_path)
    assert not processes.descends_from(1, 200, tmp_path)
    assert not processes.descends_from(999, 999, tmp_path), "a process that does not run is no one's"


def test_the_real_proc_knows_this_process():
    me = processes.read(os.getpid())
    assert me is not None and me.ppid == os.getppid() and me.pgid == os.getpgrp()
    assert processes.descends_from(os.getpid(), os.getppid())
    assert os.getpid() in processes.scan()
