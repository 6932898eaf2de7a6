"""A full disk under training: a checkpoint that cannot be written, an adapter version that cannot be promoted.

The checkpoint is the trainer's own code (torch, safetensors) writing onto a full tmpfs. The promotion is the
whole cycle under the real daemon — memories, curation, the trainer subprocess on the tiny demo model, then the
copy of the new version onto a full disk: the run fails saying so, and the version promoted before stays
active and whole.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os

import pytest
from state_faults import fill, tmpfs

from support.ollama_double.manager import wait_until

RUN_TIMEOUT = 300
pytestmark = [
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft", "safetensors")),
        reason="the train extra (torch, transformers, peft, safetensors) is not installed",
    ),
    # A test runs the real trainer up to five times (a promoted run, then three failed attempts): on a loaded
    # 2-core machine each start costs a minute, past the suite's default of 300 s per test.
    pytest.mark.timeout(3 * RUN_TIMEOUT),
]


def test_a_checkpoint_onto_a_full_disk_fails_and_keeps_the_last_complete_one(tmp_path):
    import torch

    from memwarden.training import checkpoint

    root = tmp_path / "ckpt"
    weights = {"w": torch.randn(256, 256)}  # 256 KiB: more than is left once the disk is full
    with tmpfs(root, "2m"):
        first = checkpoint.save(root, 4, trainable=weights, anchor=None, state={"step": 4}, meta={"m": 1})
        fill(root)
        # safetensors says it in its own exception type; the trainer turns any into its error event.
        with pytest.raises(Exception, match="No space left on device") as caught:
            checkpoint.save(root, 8, trainable=weights, anchor=weights, state={"step": 8}, meta={"m": 2})
        assert getattr(caught.value, "errno", errno.ENOSPC) == errno.ENOSPC
        assert [p for _, p in checkpoint.complete(root)] == [first]
        assert not [p for p in root.iterdir() if p.name.startswith(checkpoint.TMP_PREFIX)]  # space given back
        loaded = checkpoint.load(first)
        assert loaded["meta"]["step"] == 4 and torch.equal(loaded["trainable"]["w"], weights["w"])





def memories(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"profile": "alice", "kind": "conversation", "importance": 5,
                        "content": f"What is fact {i}?", "response": f"Fact {i} is that the sky is {i} shades blue."})
            for i in range(start, start + n)]


def runs(d) -> list[dict]:
    return d.call("train.history", {"limit": 20})


def wait_for_run(d, index: int) -> dict:
    """The `index`-th run (0 = the first) once it has finished."""
    def finished():
        rs = sorted(runs(d), key=lambda r: r["created_at"])
        return rs[index] if len(rs) > index and rs[index]["state"] in ("promoted", "rejected", "failed") else None
    return wait_until(finished, timeout=RUN_TIMEOUT, interval=0.5,
                      message=lambda: f"run {index} to finish; runs: {runs(d)}; log: {d.log()[-3000:]}")


def tiny_learning(base) -> dict:
    """A run of 8 steps on the demo model, checkpointing every 4, that always promotes."""
    return {"enabled": True, "base_model": str(base), "method": "lora", "importance_threshold": 50,
            "min_interval": "0s", "lr": 3e-3, "rank": 4, "alpha": 8, "max_steps": 8, "max_epochs": 0,
            "warmup_steps": 1, "micro_batch": 2, "grad_accum": 1, "max_seq_len": 64, "dry_run_steps": 0,
            "checkpoint_steps": 4, "min_recall": 0.0, "forgetting_epsilon": 10.0, "general_epsilon": 10.0,
            "device": "cpu"}


def digest(path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_a_version_that_cannot_be_written_fails_the_run_and_the_active_one_stays(make_daemon, demo_base):
    d = make_daemon(config={"learning": tiny_learning(demo_base)})
    adapters = d.workdir / "state" / "adapters"
    with tmpfs(adapters, "4m"):
        d.start()
        assert d.call("memories.import", {"lines": memories(12)})["imported"] == 12
        first = wait_for_run(d, 0)
        assert first["state"] == "promoted", first
        v1 = adapters / "alice" / "v1"
        before = digest(v1)

        unlearned = d.call("memories.list", {"consolidated": False, "limit": 1})["total"]  # the holdout's
        filler = fill(adapters)
        d.call("memories.import", {"lines": memories(12, start=12)})
        second = wait_for_run(d, 1)
        assert second["state"] == "failed", second
        assert "No space left on device" in second["error"] and str(adapters) in second["error"], second["error"]
        # The alert says the same, the version promoted before is still the active one, untouched, and the
        # half-copied new one gave its space back.
        alert = wait_until(lambda: next((a for a in d.call("alerts", {"limit": 1})["active"]
                                         if a["kind"] == "training.failed"), None), timeout=10)
        assert "No space left on device" in alert["message"]
        versions = d.call("train.status")["versions"]
        assert [(v["version"], v["active"]) for v in versions] == [(1, 1)]
        assert digest(v1) == before
        assert sorted(p.name for p in (adapters / "alice").iterdir()) == ["v1"]
        # The memories of the failed run stay unconsolidated, for the next run to learn.
        assert d.call("memories.list", {"consolidated": False, "limit": 1})["total"] == unlearned + 12
        assert d.proc.poll() is None and d.call("status")["ready"] is True
        filler.unlink()
        assert d.stop() == 0


def leave_free(filler, nbytes: int) -> None:
    """Give back `nbytes` of a filler that filled its filesystem."""
    os.truncate(filler, max(0, filler.stat().st_size - nbytes))


def test_checkpoints_onto_a_full_disk_fail_the_run_saying_so_and_the_active_version_stays(make_daemon, demo_base):
    """Room for the curated files but not for a checkpoint: the trainer's error line (not its log, which is on
    the same full disk) reaches the run's error, and the version promoted before stays active."""
    d = make_daemon(config={"learning": tiny_learning(demo_base)})
    run_dirs = d.workdir / "state" / "runs"
    with tmpfs(run_dirs, "8m"):
        d.start()
        d.call("memories.import", {"lines": memories(12)})
        assert wait_for_run(d, 0)["state"] == "promoted"
        # The curated files, general rehearsal included, fit in 200 KiB; a checkpoint (~700 KiB) does not.
        leave_free(fill(run_dirs), 200 * 1024)
        d.call("memories.import", {"lines": memories(12, start=12)})
        second = wait_for_run(d, 1)
        assert second["state"] == "failed", second
        assert second["error"].startswith("RuntimeError: trainer failed 3 times (last exit 1): ")
        assert second["error"].endswith("No space left on device (os error 28)"), second["error"]
        assert [(v["version"], v["active"]) for v in d.call("train.status")["versions"]] == [(1, 1)]
        assert d.proc.poll() is None and d.call("status")["ready"] is True
        assert d.stop() == 0
