"""The Ray job's side of a run: the shipped spec placed on its node, the adapter's manifest, and the end of its
log."""

from __future__ import annotations

import hashlib
import json
import sys

from memwarden.training import ray_entry


def test_the_spec_is_placed_on_the_node(tmp_path):
    here, root = tmp_path / "wd", tmp_path / "node-runs"
    data = {"run_id": "r1", "output_dir": "r1/dry", "train_file": "train.jsonl", "holdout_file": "holdout.jsonl",
            "probe_file": None, "recall_file": None, "init_adapter": "init_adapter", "device": "cpu",
            "ewc": {"prior_fisher": "prior_fisher.safetensors"}}
    out = ray_entry.localize(data, here, root)
    assert out["output_dir"] == str(root / "r1" / "dry") and out["train_file"] == str(here / "train.jsonl")
    assert out["init_adapter"] == str(here / "init_adapter") and out["probe_file"] is None
    assert out["ewc"]["prior_fisher"] == str(here / "prior_fisher.safetensors") and out["device"] == "cpu"


def test_the_manifest_lists_the_adapter_files_alone(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "checkpoints" / "step-4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-4" / "optimizer.pt").write_bytes(b"o" * 1000)
    (tmp_path / "final" / "adapter_model.safetensors").write_bytes(b"w" * 10)
    (tmp_path / "final" / "adapter_config.json").write_bytes(b"{}")
    (tmp_path / "eval.json").write_bytes(b"{}")
    files = ray_entry.manifest(tmp_path)
    assert [f["name"] for f in files] == ["final/adapter_model.safetensors", "final/adapter_config.json",
                                          "eval.json"]
    assert files[0] == {"name": "final/adapter_model.safetensors", "size": 10,
                        "sha256": hashlib.sha256(b"w" * 10).hexdigest()}
    assert ray_entry.tree_bytes(tmp_path) == 1014


def test_the_trainer_runs_under_the_hosts_lease_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(ray_entry.shutil, "which", lambda name: "/usr/bin/memwardenctl")
    monkeypatch.delenv(ray_entry.LEASE_ENV, raising=False)
    assert ray_entry.trainer_command(tmp_path / "j.json", 2**30)[1:3] == ["-m", "memwarden.training"]
    monkeypatch.setenv(ray_entry.LEASE_ENV, "1")
    cmd = ray_entry.trainer_command(tmp_path / "j.json", 2**30)
    assert cmd[:3] == ["/usr/bin/memwardenctl", "lease", str(2**30)] and cmd[cmd.index("--") + 2:] == [
        "-m", "memwarden.training", str(tmp_path / "j.json")]


def test_the_exit_record_is_the_last_and_blank_lines_fill_its_batch_of_the_log(monkeypatch, tmp_path, capsys):
    here = tmp_path / "wd"
    here.mkdir()
    (here / "job.json").write_text(json.dumps({"run_id": "r1", "output_dir": "r1/dry", "dry_run_steps": 2,
                                               "device": "cpu", "ewc": {}}))
    monkeypatch.setenv(ray_entry.RUNS_ENV, str(tmp_path / "node-runs"))
    monkeypatch.setattr(ray_entry, "trainer_command", lambda spec, size: [
        sys.executable, "-c", "print('{\"event\": \"done\"}')"])
    assert ray_entry.main([str(here / "job.json")]) == 0
    lines = capsys.readouterr().out.split("\n")
    records = [json.loads(line) for line in lines if line]
    assert records == [{"event": "done"}, {"event": "exit", "code": 0}]
    assert lines[-12:] == ['{"event": "exit", "code": 0}', *[""] * 11]  # the record, its 10 blank lines, the end
