"""GPU arbitration against the sim GPU and the Ollama test double, both real separate processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from memwarden.control.protocol import RpcError
from memwarden.gpu import simfile
from support.daemon import BIN
from support.ollama_double import OllamaDouble
from support.ollama_double.manager import gpu_used, sim_gpu, wait_until

GiB = 1024**3
BIG = "big:latest"
MODELS = [
    {"name": "big", "size": 6 * GiB, "family": "llama", "parameter_size": "8B"},
    {"name": "small-a", "size": 3 * GiB, "family": "llama", "parameter_size": "1.5B"},
    {"name": "small-b", "size": 3 * GiB, "family": "llama", "parameter_size": "1.5B"},
    {"name": "small-c", "size": 3 * GiB, "family": "llama", "parameter_size": "1.5B"},
]
LINGER = 1.0  # seconds an unloaded runner keeps its VRAM, as Ollama's do


@pytest.fixture
def world(make_daemon):
    """A 12 GiB sim GPU, the Ollama double booking into it, and a factory for daemons watching both."""
    made: dict = {}

    def start(gpus=None, config=None, double_gpu=0, with_double=True, env_path=None, **double_kw):
        env = {"PATH": f"{env_path}:{os.environ['PATH']}"} if env_path else None
        d = make_daemon(env=env)
        sim = d.workdir / "gpu.json"
        sim_gpu(sim, 12 * GiB, extra_gpus=gpus or ())
        double = None
        if with_double:
            double = OllamaDouble(sim, MODELS, gpu=double_gpu, unload_linger=LINGER, workdir=d.workdir / "od",
                                  **double_kw).start()
            made.setdefault("doubles", []).append(double)
        sections = {k: dict(v) for k, v in d.sections.items()}
        # 2.5 GiB for the CUDA context and fragmentation: with a 6 GiB model resident, 4 GiB no longer fits.
        sections["gpu"] = {"backend": "sim", "sim_file": str(sim), "reserve": "2.5GiB", "evict_timeout": "20s"}
        sections["ollama"] = {"url": double.url if double else "http://127.0.0.1:9", "timeout": "5s"}
        for name, values in (config or {}).items():
            sections.setdefault(name, {}).update(values)
        d.write_config(sections)
        d.sections = sections
        d.start()
        return d, double, sim

    yield start
    for double in made.get("doubles", []):
        double.cleanup()


def wait_resident(d, name, resident=True):
    def check():
        models = {a["name"]: a for a in d.call("models.list")}
        return name in models and models[name]["resident"] == resident
    wait_until(check, timeout=20, message=f"{name} resident={resident} in the daemon's view")


def lease(d, size, **params):
    return d.call("lease.acquire", {"size": size, "holder": "test", "pid": os.getpid(), **params})


def test_a_lease_evicts_confirms_free_memory_grants_and_restores(world):
    d, double, sim = world()
    double.load(BIG, keep_alive="-1m")
    runner = double.runner_pids()
    assert gpu_used(sim) == 6 * GiB
    wait_resident(d, BIG)

    granted = lease(d, "4GiB")
    assert granted["gpu"] == 0 and granted["evicted"][0]["name"] == BIG
    # Ollama answered the unload at once, but the grant waited until the runner's VRAM was really gone.
    assert not any(simfile.pid_alive(p) for p in runner)
    assert gpu_used(sim) == 0
    assert double.ps() == []

    released = d.call("lease.release", {"id": granted["id"]})
    assert [r["name"] for r in released["restored"]] == [BIG] and released["restored"][0]["ok"]
    assert released["downtime_s"] >= LINGER
    assert [m["name"] for m in double.ps()] == [BIG]
    keep_alives = [r["keep_alive"] for r in double.state()["requests"] if r.get("model") == BIG]
    assert keep_alives[-1] in (-1, "-1m"), "the model came back with its keep_alive (forever)"
    history = d.call("lease.list")["recent"][0]
    assert history["state"] == "released" and history["downtime_s"] == released["downtime_s"]


def test_a_gpu_with_room_is_chosen_without_any_eviction(world):
    d, double, _ = world(gpus=[{"index": 1, "name": "Sim 12G b", "total_bytes": 12 * GiB}])
    double.load(BIG)
    wait_resident(d, BIG)
    granted = lease(d, "8GiB")
    assert granted["gpu"] == 1 and granted["evicted"] == []
    assert [m["name"] for m in double.ps()] == [BIG]


def test_a_lease_that_cannot_fit_is_refused_naming_the_holders(world):
    d, double, sim = world()
    double.load(BIG)
    wait_resident(d, BIG)
    d.call("models.pin", {"name": BIG})
    squatter = subprocess.Popen(["sleep", "120"])
    try:
        simfile.book(sim, 0, squatter.pid, 2 * GiB)
        with pytest.raises(RpcError) as refused:
            lease(d, "6GiB")
        message = refused.value.message
        assert "cannot lease 6.0 GiB" in message
        assert f"model {BIG} 6.0 GiB, pinned" in message
        assert f"pid {squatter.pid} sleep 2.0 GiB" in message
        assert [m["name"] for m in double.ps()] == [BIG], "a refused lease evicts nothing"
    finally:
        squatter.kill()
        squatter.wait()


def test_ollama_down_leases_still_work_on_free_memory(world):
    d, _, _ = world(with_double=False)
    wait_until(lambda: "ollama" in d.call("status")["degraded"], timeout=20, message="ollama degraded")
    granted = lease(d, "4GiB")
    assert granted["evicted"] == []
    status = d.call("status")
    assert "ollama" in status["degraded"] and "1 lease" in status["summary"]
    # ollama.url is configured: its absence is alerted, once it has lasted the probe's hold (alerts.hold).
    wait_until(lambda: any(a["kind"] == "probe.degraded" and a["key"] == "ollama"
                           for a in d.call("status")["active_alerts"]), timeout=20, message="a probe.degraded alert")


def test_a_holder_killed_with_sigkill_gets_its_lease_reclaimed_and_models_restored(world):
    d, double, _ = world()
    double.load(BIG)
    wait_resident(d, BIG)
    ctl = subprocess.Popen([BIN / "memwardenctl", "--socket", d.socket_path, "lease", "4GiB", "--", "sleep", "600"],
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ctl.stderr.readline()
        assert "lease" in line and "evicted big:latest" in line, line
        assert len(d.call("lease.list")["active"]) == 1
        ctl.kill()  # SIGKILL: no chance to release
        ctl.wait()
        wait_until(lambda: d.call("lease.list")["active"] == [], timeout=20, message="the lease reclaimed")
        recent = d.call("lease.list")["recent"][0]
        assert recent["release_reason"] == "holder died"
        wait_until(lambda: [m["name"] for m in double.ps()] == [BIG], timeout=20, message="big restored")
    finally:
        with contextlib.suppress(ProcessLookupError):  # the command, in its own group, died with its client
            os.killpg(ctl.pid, signal.SIGKILL)


def test_memwardenctl_lease_runs_the_command_on_the_granted_gpu(world):
    d, _, _ = world()
    run = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "lease", "4GiB", "--",
                          "sh", "-c", "echo $CUDA_VISIBLE_DEVICES $MEMWARDEN_LEASE_ID"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    gpu, lease_id = run.stdout.split()
    assert gpu == "0"
    assert d.call("lease.list")["recent"][0]["id"] == lease_id
    assert d.call("lease.list")["active"] == []
    failing = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "lease", "1GiB", "--",
                              "sh", "-c", "exit 7"], capture_output=True, text=True, timeout=60)
    assert failing.returncode == 7
    assert d.call("lease.list")["active"] == []


def proxy_generate(port, model, timeout=30):
    body = json.dumps({"model": model, "prompt": "hello", "stream": False}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_proxy_request_during_a_lease_is_held_then_answered_503(world):
    port = free_port()
    d, double, _ = world(config={"proxy": {"enabled": True, "listen": f"127.0.0.1:{port}", "hold_timeout": "1s"}})
    double.load(BIG)
    wait_resident(d, BIG)
    granted = lease(d, "4GiB")
    status, headers, body = proxy_generate(port, BIG)
    assert status == 503 and headers["Retry-After"] == "30"
    assert body["error"].startswith("memwarden: GPU busy")
    d.call("lease.release", {"id": granted["id"]})


def test_a_held_proxy_request_proceeds_when_the_lease_is_released(world):
    port = free_port()
    d, double, _ = world(config={"proxy": {"enabled": True, "listen": f"127.0.0.1:{port}", "hold_timeout": "60s"}})
    double.load(BIG)
    wait_resident(d, BIG)
    granted = lease(d, "4GiB")
    result = {}
    t = threading.Thread(target=lambda: result.update(r=proxy_generate(port, BIG, timeout=90)))
    t.start()
    wait_until(lambda: d.call("diagnostics")["requests_served"] > 0 and t.is_alive(), timeout=10,
               message="the request to be held")
    d.call("lease.release", {"id": granted["id"]})
    t.join(90)
    status, _, body = result["r"]
    assert status == 200 and body["done"] is True


def test_a_proxy_request_preempts_a_preemptible_lease(world):
    port = free_port()
    d, double, _ = world(config={"proxy": {"enabled": True, "listen": f"127.0.0.1:{port}", "hold_timeout": "60s",
                                           "preempt": True, "resume_after_idle": "1h"}})
    double.load(BIG)
    wait_resident(d, BIG)
    granted = lease(d, "4GiB", preemptible=True)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=proxy_generate(port, BIG, timeout=90)))
    t.start()
    # The holder's long-poll learns it must yield; it checkpoints and releases, as a trainer would.
    assert d.call("lease.watch", {"id": granted["id"], "timeout": 30})["state"] == "preempting"
    d.call("lease.release", {"id": granted["id"]})
    t.join(90)
    assert result["r"][0] == 200
    # Serving was just busy: a preemptible lease waits for the idle period before it is granted again.
    with pytest.raises(RpcError) as refused:
        lease(d, "4GiB", preemptible=True)
    assert "serving has priority" in refused.value.message


def test_the_scheduler_evicts_least_recently_used_and_respects_pins(world):
    d, double, _ = world(config={"gpu": {"reserve": "512MiB", "scheduler": "lru"}})
    for name in ("small-a", "small-b", "small-c"):
        assert d.call("models.load", {"name": name})["loaded"] is True
    # 3 × 3 GiB fill 9 of 11.5 GiB; a 6 GiB model needs two of them gone: the two least recently used.
    assert d.call("models.load", {"name": "small-a"})["hit"] is True
    result = d.call("models.load", {"name": "big"})
    assert result["evicted"] == ["small-b:latest", "small-c:latest"]
    assert sorted(m["name"] for m in double.ps()) == [BIG, "small-a:latest"]
    d.call("models.pin", {"name": "small-a"})
    again = d.call("models.load", {"name": "small-b"})
    assert again["evicted"] == [BIG], "the pinned model stays"


def test_leases_survive_a_daemon_restart_and_still_restore(world):
    d, double, _ = world()
    double.load(BIG)
    wait_resident(d, BIG)
    granted = lease(d, "4GiB")  # held by this test process, which stays alive across the restart
    assert d.stop() == 0
    d.start()
    active = d.call("lease.list")["active"]
    assert [x["id"] for x in active] == [granted["id"]]
    assert active[0]["evicted"][0]["name"] == BIG
    released = d.call("lease.release", {"id": granted["id"]})
    assert released["restored"][0]["ok"] is True
    assert [m["name"] for m in double.ps()] == [BIG]


def test_the_gpu_view_shows_budgets_processes_and_models(world):
    d, double, _ = world()
    double.load(BIG)
    wait_resident(d, BIG)
    view = d.call("gpu")
    gpu0 = view["gpus"][0]
    assert view["backend"] == "sim" and gpu0["total_bytes"] == 12 * GiB
    assert gpu0["used_bytes"] == 6 * GiB
    assert gpu0["leasable_bytes"] == 6 * GiB - int(2.5 * GiB)
    assert [p["pid"] for p in gpu0["processes"]] == double.runner_pids()
    assert [m["name"] for m in view["ollama"]["loaded"]] == [BIG]
    table = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "gpu"], capture_output=True,
                           text=True, timeout=30)
    assert table.returncode == 0 and "LEASABLE" in table.stdout and BIG in table.stdout


def test_escalation_stops_and_restarts_the_ollama_service_when_vram_never_frees(world, tmp_path):
    """A runner that keeps its VRAM far past the unload (ollama issues #16336, #9782): with gpu.escalate and
    ollama.service set, the service is stopped as a last resort and started again when the lease ends."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "systemctl.calls"
    d, double, _ = world(config={"gpu": {"escalate": True, "evict_timeout": "1s"},
                                   "ollama": {"service": "ollama.service"}},
                           env_path=str(fake_bin))
    # A stand-in systemctl for the unit: "stop" kills this double's runners (what stopping Ollama does).
    (fake_bin / "systemctl").write_text(
        f"#!/bin/sh\necho \"$@\" >> {calls}\n"
        f"[ \"$1\" = stop ] && pkill -KILL -f '_runner.py runner --model {double.models_dir}' ; exit 0\n")
    (fake_bin / "systemctl").chmod(0o755)
    double.configure(unload_linger=3600)
    double.load(BIG)
    wait_resident(d, BIG)
    granted = lease(d, "4GiB")
    assert granted["escalated"] is True
    assert calls.read_text().split("\n")[0] == "stop ollama.service"
    d.call("lease.release", {"id": granted["id"]})
    assert calls.read_text().split("\n")[1] == "start ollama.service"


def test_a_models_load_time_is_learned_from_the_load_the_scheduler_makes(world):
    d, _, _ = world(load_seconds=0.4)
    d.call("models.load", {"name": "small-a"})
    models = {m["name"]: m for m in d.call("models.list")}
    assert models["small-a:latest"]["load_measured"] is True
    assert 0.4 <= models["small-a:latest"]["load_seconds"] < 10, "the double's load time, timed (its answer has none)"
