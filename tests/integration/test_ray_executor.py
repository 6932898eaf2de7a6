"""Runs as Ray jobs on a two-node Ray cluster on this machine (learning.ray_address): the head has no
trainer_gpu, the worker has one, so a run lands on the worker; the real daemon talks to the Jobs API, the real
trainer trains the tiny demo model on the worker's CPU, and the adapter comes home to be promoted and exported to
the Ollama double. The cluster lives in a network namespace with loopback alone (Ray's gRPC servers bind every
interface); the daemon reaches its Jobs API through a forwarder on the host's loopback."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import urllib.request

import pytest

from support.daemon import BIN
from support.memories import FACTS
from support.ollama_double import OllamaDouble
from support.ollama_double.manager import sim_gpu, wait_until
from support.tiny_run import BASE, tiny_learning

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="the ray extra is not installed (pip install -e '.[ray]')"),
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
        reason="the train extra (torch, transformers, peft) is not installed"),
    pytest.mark.timeout(900),
]

GiB = 1024**3
RUN_TIMEOUT = 600

# Long enough (a minute of the demo model on one core) that a run is still training when a test acts on it.
LONG_RUN = {"max_steps": 3000, "checkpoint_steps": 100}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from support.ray_cluster import RayCluster

    c = RayCluster(tmp_path_factory.mktemp("node-runs"))
    try:
        c.start_head()
        c.worker = c.add_worker()
        yield c
    finally:
        c.close()


@pytest.fixture
def learning(make_daemon, demo_base, cluster):
    started = []

    def start(extra=None):
        d = make_daemon()
        sim = d.workdir / "gpu.json"
        sim_gpu(sim, 12 * GiB)
        double = OllamaDouble(sim, [{"name": BASE, "size": GiB, "family": "llama"}], unload_linger=0.2,
                              workdir=d.workdir / "od").start()
        started.append(double)
        sections = {k: dict(v) for k, v in d.sections.items()}
        sections["daemon"]["sample_interval"] = "300ms"
        sections["gpu"] = {"backend": "sim", "sim_file": str(sim), "reserve": "512MiB"}
        sections["ollama"] = {"url": double.url}
        sections["learning"] = tiny_learning(demo_base, dry_run_steps=0, ray_address=cluster.address,
                                              ray_resources={"trainer_gpu": 1})
        return d.start_with(sections, extra), double

    yield start
    for double in started:
        double.cleanup()


def import_memories(d, path):
    lines = [json.dumps({"profile": "alice", "kind": kind, "content": content, "response": response,
                         "importance": 5}) for kind, content, response in FACTS * 2]
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "memories", "import", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def runs(d):
    return d.call("train.history", {"limit": 50})


def wait_for_run(d, states=("promoted", "rejected", "failed")):
    return wait_until(lambda: next((r for r in runs(d) if r["state"] in states), None), timeout=RUN_TIMEOUT,
                      interval=0.5, message=lambda: f"a run in {states}; runs: {runs(d)}; log: {d.log()[-3000:]}")


def wait_for_event(d, name, **fields):
    return wait_until(lambda: next((e for e in d.log_events() if e.get("event") == name
                                    and all(e.get(k) == v for k, v in fields.items())), None),
                      timeout=RUN_TIMEOUT, interval=0.2, message=lambda: f"{name}; log: {d.log()[-3000:]}")


def nodes(cluster):
    with urllib.request.urlopen(cluster.address + "/api/v0/nodes?detail=1&limit=100", timeout=30) as resp:
        return json.loads(resp.read())["data"]["result"]["result"]


def node_with_the_resource(cluster):
    alive = [n for n in nodes(cluster) if n["state"] == "ALIVE" and "trainer_gpu" in (n.get("resources_total") or {})]
    assert len(alive) == 1, alive
    return alive[0]["node_id"]


def test_a_run_lands_on_the_worker_comes_home_and_is_promoted(learning, cluster, tmp_path):
    assert cluster.interfaces() == ["lo"] and cluster.listening_beyond_loopback() == []
    d, double = learning()
    import_memories(d, tmp_path / "m.jsonl")
    run = wait_for_run(d)
    assert run["state"] == "promoted", (run["error"], d.log()[-6000:])
    assert run["executor"] == "ray" and run["node"] == node_with_the_resource(cluster)
    fetched = wait_for_event(d, "adapter fetched from the Ray job")
    assert fetched["node"] == run["node"]
    assert 0 < fetched["fetched_bytes"] < fetched["output_bytes"]  # the adapter alone, not the checkpoints
    version_dir = d.workdir / "state" / "adapters" / "alice" / "v1"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "fisher.safetensors"]
    assert fetched["fetched_bytes"] == sum(p.stat().st_size for p in version_dir.iterdir()) + \
        (d.workdir / "state" / "runs" / run["id"] / "eval.json").stat().st_size
    wait_for_event(d, "adapter exported to Ollama")
    assert {"memwarden/alice:v1", "memwarden/alice:latest"} <= {m["name"] for m in double.tags()}
    # The GPU it trained on is the worker's: no lease was taken on this host's.
    assert not [x for x in d.call("lease.list")["recent"] if x["holder"].startswith("training")]
    history = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "train", "history"],
                             capture_output=True, text=True, timeout=60).stdout
    assert f"ray@{run['node'][:12]}" in history


def test_a_worker_lost_mid_run_requeues_it_and_a_returning_worker_resumes_its_checkpoint(learning, cluster, tmp_path):
    d, _ = learning({"learning": LONG_RUN})
    import_memories(d, tmp_path / "m.jsonl")
    checkpoint = wait_for_event(d, "trainer: checkpoint")
    lost = node_with_the_resource(cluster)
    cluster.kill_raylet(cluster.worker)
    wait_for_event(d, "training run preempted; it resumes from its checkpoint when the GPU is free")
    cluster.worker = cluster.add_worker()
    run = wait_for_run(d)
    assert run["state"] == "promoted", (run["error"], d.log()[-6000:])
    assert run["node"] == node_with_the_resource(cluster) != lost
    starts = [e for e in d.log_events() if e.get("event") == "trainer: start"]
    assert starts[0]["resumed_from_step"] in (0, None)
    assert starts[-1]["resumed_from_step"] >= checkpoint["step"]
    assert any(e.get("event", "").startswith("the Ray job ended without its trainer") for e in d.log_events())


def test_a_restarted_daemon_reattaches_to_the_running_job(learning, cluster, tmp_path):
    d, _ = learning({"learning": LONG_RUN})
    import_memories(d, tmp_path / "m.jsonl")
    submitted = wait_for_event(d, "submitted the Ray job")
    wait_for_event(d, "trainer: checkpoint")
    assert d.stop() == 0
    d.start()
    attached = wait_for_event(d, "re-attached to the Ray job")
    assert attached["job"] == submitted["job"] and attached["status"] == "RUNNING"
    run = wait_for_run(d)
    assert run["state"] == "promoted", (run["error"], d.log()[-6000:])
    assert [e["job"] for e in d.log_events() if e.get("event") == "submitted the Ray job"] == [submitted["job"]]
