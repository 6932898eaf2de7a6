"""What a trainer unit runs, with a stand-in trainer module: the progress goes to the run's file, the exit
status follows as a unit_exit record, the GPU comes from the launch file and the parent-pid watch is dropped."""

from __future__ import annotations

import json

from memwarden.learning import unit_entry
from memwarden.learning.systemd_executor import EXIT_OOM_KILLED, UnitState, exit_code

FAKE_TRAINER = """
import json, os, sys
print("a library's chatter")
print(json.dumps({"event": "step", "step": 1, "spec": sys.argv[1], "cuda": os.environ["CUDA_VISIBLE_DEVICES"],
                  "parent": os.environ.get("MEMWARDEN_PARENT_PID")}))
sys.exit(75)
"""


def test_progress_and_exit_status_land_in_the_progress_file(tmp_path, monkeypatch):
    (tmp_path / "pkg" / "fake_trainer").mkdir(parents=True)
    (tmp_path / "pkg" / "fake_trainer" / "__main__.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pkg"))
    monkeypatch.setenv("MEMWARDEN_PARENT_PID", "1")
    monkeypatch.setattr(unit_entry, "LAUNCH_DIR", tmp_path / "launch")
    (tmp_path / "launch").mkdir()
    progress = tmp_path / "progress.jsonl"
    (tmp_path / "launch" / "r1.json").write_text(json.dumps({"spec": "/s.json", "progress": str(progress), "gpu": 1}))
    assert unit_entry.main(["r1"], trainer="fake_trainer") == 75
    lines = progress.read_text().splitlines()
    assert lines[0] == "a library's chatter"
    assert json.loads(lines[1]) == {"event": "step", "step": 1, "spec": "/s.json", "cuda": "1", "parent": None}
    assert json.loads(lines[2]) == {"event": "unit_exit", "code": 75}


def test_a_missing_launch_file_is_a_config_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(unit_entry, "LAUNCH_DIR", tmp_path)
    assert unit_entry.main(["r1"]) == 78
    assert "cannot read the launch file" in capsys.readouterr().err
    assert unit_entry.main([]) == 64


def test_a_failed_trainer_is_said_on_stderr_for_the_journal(tmp_path, monkeypatch, capsys):
    (tmp_path / "pkg" / "failing_trainer").mkdir(parents=True)
    (tmp_path / "pkg" / "failing_trainer" / "__main__.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pkg"))
    monkeypatch.setattr(unit_entry, "LAUNCH_DIR", tmp_path / "launch")
    (tmp_path / "launch").mkdir()
    progress = tmp_path / "progress.jsonl"
    (tmp_path / "launch" / "r2.json").write_text(json.dumps({"spec": "/s.json", "progress": str(progress)}))
    assert unit_entry.main(["r2"], trainer="failing_trainer") == 3
    assert "trainer of run r2 exited with status 3" in capsys.readouterr().err


def test_a_trainer_killed_by_sigkill_reads_as_killed_at_its_memory_max(tmp_path, monkeypatch):
    # The OOM killer's SIGKILL: under cgroup v2 systemd also reports Result=oom-kill; under v1 it sees only the
    # unit's main process exit, and this record is what tells the executor.
    (tmp_path / "pkg" / "killed_trainer").mkdir(parents=True)
    (tmp_path / "pkg" / "killed_trainer" / "__main__.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pkg"))
    monkeypatch.setattr(unit_entry, "LAUNCH_DIR", tmp_path / "launch")
    (tmp_path / "launch").mkdir()
    progress = tmp_path / "progress.jsonl"
    (tmp_path / "launch" / "r3.json").write_text(json.dumps({"spec": "/s.json", "progress": str(progress)}))
    assert unit_entry.main(["r3"], trainer="killed_trainer") == EXIT_OOM_KILLED
    record = json.loads(progress.read_text().splitlines()[-1])
    assert record == {"event": "unit_exit", "code": EXIT_OOM_KILLED}
    assert exit_code(UnitState("failed", "exit-code", 0, EXIT_OOM_KILLED), record["code"]) == EXIT_OOM_KILLED
