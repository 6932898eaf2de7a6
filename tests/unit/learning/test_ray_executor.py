"""The Ray executor's own decisions, without a cluster: the exit a run reads from a job, the resources of its
entrypoint, the spec it ships, the adapter as it comes home in chunks, and what a restarted daemon finds of a
job (tests/integration/test_ray_executor.py runs it on a real cluster)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from memwarden.learning.executor import JobRequest
from memwarden.learning.jobspec import EXIT_DONE, EXIT_PREEMPTED, Ewc, JobSpec, SimGpu
from memwarden.learning.ray_api import JobInfo, zip_package
from memwarden.learning.ray_executor import JOB_FILE, AdapterReceiver, RayExecutor, exit_code, ship, split_resources
from memwarden.learning.reattach import Trace


def info(status, code=None):
    return JobInfo("j", status, "node", code, "")


@pytest.mark.parametrize(("job", "said", "code"), [
    (info("SUCCEEDED", 0), None, EXIT_DONE),
    (info("STOPPED"), None, EXIT_PREEMPTED),  # stopped: the trainer checkpointed on its SIGTERM
    (info("STOPPED"), 75, 75),
    (info("FAILED", 1), None, 1),  # the trainer failed by itself: a crash, retried from the checkpoint
    (info("FAILED", 75), None, 75),
    (info("FAILED"), None, EXIT_PREEMPTED),  # no exit of its own: its node died; requeued
    (info("FAILED", 1), 0, 0),  # the entry's own exit line wins
])
def test_the_exit_a_run_reads_from_its_job(job, said, code):
    assert exit_code(job, said) == code


def test_resources_split_into_custom_gpus_and_cpus():
    assert split_resources({"trainer_gpu": 1, "num_gpus": 1, "num_cpus": 2}) == ({"trainer_gpu": 1.0}, 1.0, 2.0)
    assert split_resources({}) == ({}, 0.0, 0.0)


def make_spec(tmp_path, **kw):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    for name in ("train.jsonl", "holdout.jsonl", "probe.jsonl"):
        (run / name).write_text("{}\n")
    init = tmp_path / "adapters" / "v1"
    init.mkdir(parents=True)
    (init / "adapter_config.json").write_text("{}")
    (init / "fisher.safetensors").write_bytes(b"F")
    return run, JobSpec("r1", "alice", "/models/base", "lora", str(run / "dry"), str(run / "train.jsonl"),
                        str(run / "holdout.jsonl"), probe_file=str(run / "probe.jsonl"), init_adapter=str(init),
                        ewc=Ewc(lam=0.4, prior_fisher=str(init / "fisher.safetensors")),
                        sim_gpu=SimGpu("/run/gpu.json", 0, 1), **kw)


def test_the_shipped_spec_names_its_files_in_the_working_dir_and_its_output_by_run(tmp_path):
    run, spec = make_spec(tmp_path)
    data, files = ship(spec, run, "auto")
    assert data["output_dir"] == "r1/dry" and data["device"] == "auto" and data["sim_gpu"] is None
    assert (data["train_file"], data["probe_file"], data["recall_file"]) == ("train.jsonl", "probe.jsonl", None)
    assert data["init_adapter"] == "init_adapter" and data["ewc"]["prior_fisher"] == "prior_fisher.safetensors"
    assert sorted(name for name, _ in files) == [
        "holdout.jsonl", "init_adapter/adapter_config.json", "init_adapter/fisher.safetensors",
        "prior_fisher.safetensors", "probe.jsonl", "train.jsonl"]
    assert all(path.is_file() for _, path in files)


def test_a_package_is_named_by_its_content(tmp_path):
    (tmp_path / "a").write_text("one")
    first, _ = zip_package([("a", tmp_path / "a")])
    assert first == zip_package([("a", tmp_path / "a")])[0] and first.startswith("gcs://_ray_pkg_")
    (tmp_path / "a").write_text("two")
    assert zip_package([("a", tmp_path / "a")])[0] != first


def send(receiver, name, data, chunk=4):
    for offset in range(0, len(data), chunk):
        receiver.chunk({"name": name, "offset": offset, "data": base64.b64encode(data[offset:offset + chunk]).decode()})


def manifest(files):
    return {"event": "adapter_manifest", "output_bytes": 10_000,
            "files": [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()]}


FILES = {"final/adapter_model.safetensors": b"weights-" * 5, "final/adapter_config.json": b"{}",
         "eval.json": json.dumps({"step": 3}).encode()}


def test_the_adapter_comes_home_verified_and_installed_as_final(tmp_path):
    r = AdapterReceiver(tmp_path)
    r.manifest(manifest(FILES))
    for name, data in FILES.items():
        assert not r.complete()
        send(r, name, data)
    assert r.complete() and r.fetched_bytes == sum(map(len, FILES.values()))
    r.install()
    assert {n: (tmp_path / n).read_bytes() for n in FILES} == FILES


def test_a_file_already_home_by_its_hash_is_not_fetched_again(tmp_path):
    first = AdapterReceiver(tmp_path)
    first.manifest(manifest(FILES))
    send(first, "final/adapter_model.safetensors", FILES["final/adapter_model.safetensors"])
    again = AdapterReceiver(tmp_path)  # a restarted daemon reads the job's log from its start
    again.manifest(manifest(FILES))
    for name, data in FILES.items():
        send(again, name, data)
    assert again.complete()
    assert again.fetched_bytes == len(FILES["final/adapter_config.json"]) + len(FILES["eval.json"])


def test_a_corrupted_chunk_leaves_the_adapter_incomplete(tmp_path):
    r = AdapterReceiver(tmp_path)
    r.manifest(manifest(FILES))
    for name, data in FILES.items():
        send(r, name, data.replace(b"weights", b"wEights") if "model" in name else data)
    assert not r.complete()


def test_names_outside_the_run_are_ignored(tmp_path):
    r = AdapterReceiver(tmp_path / "run")
    r.manifest(manifest({"../escape": b"x", "/etc/passwd": b"y", "eval.json": b"{}"}))
    assert [f["name"] for f in r.files] == ["eval.json"]


class FakeApi:
    def __init__(self, job: JobInfo | None):
        self.job = job

    async def info(self, job_id):
        return self.job


@pytest.mark.parametrize(("job", "dry", "trace"), [
    (None, 0, Trace("none")),  # the cluster forgot the job
    (info("RUNNING"), 0, Trace("running")),
    (info("PENDING"), 0, Trace("running")),  # waiting for a node with the resources
    (info("SUCCEEDED", 0), 0, Trace("ended", EXIT_DONE, fetchable=True, detail="Ray job j SUCCEEDED")),
    (info("SUCCEEDED", 0), 2, Trace("ended", EXIT_DONE, fetchable=False, detail="Ray job j SUCCEEDED")),
    (JobInfo("j", "FAILED", "n", 1, "exit 1"), 0, Trace("ended", 1, fetchable=True, detail="Ray job j FAILED: exit 1")),
])
async def test_find_reports_the_phases_job_by_the_id_kept_in_the_run(tmp_path, job, dry, trace):
    ex = RayExecutor("http://127.0.0.1:1", {}, "cpu", 0, tmp_path)
    ex.api = FakeApi(job)
    run, spec = make_spec(tmp_path, dry_run_steps=dry)
    req = JobRequest(spec, run / "job.run.json", run, None)
    assert await ex.find(req) == Trace("none")  # no job submitted
    (run / JOB_FILE).write_text(json.dumps({"job_id": "j", "phase": "dry.json"}))
    assert await ex.find(req) == Trace("none")  # a job of another phase
    (run / JOB_FILE).write_text(json.dumps({"job_id": "j", "phase": "job.run.json"}))
    assert await ex.find(req) == trace
    await ex.forget(req)
    assert await ex.find(req) == Trace("none")
