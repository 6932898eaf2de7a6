"""The real memwardend with metrics on: scraped over HTTP, against the sim GPU and this machine's memory."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from memwarden import __version__
from memwarden.gpu import simfile
from support.ollama_double.manager import sim_gpu, wait_until

GiB = 1024**3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def scrape_or_none(port: int) -> dict[str, list] | None:
    try:
        return scrape(port)
    except (urllib.error.URLError, ConnectionError):
        return None


def by_gpu(samples: dict[str, list], name: str) -> dict[str, object]:
    return {s.labels["gpu"]: s for s in samples.get(name, [])}


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def start(make_daemon, listen: str, gpus: list[dict] | None = None):
    d = make_daemon()
    sim = sim_gpu(d.workdir / "gpu.json", 12 * GiB, extra_gpus=gpus or ())
    sections = {k: dict(v) for k, v in d.sections.items()}
    sections["gpu"] = {"backend": "sim", "sim_file": str(sim)}
    sections["metrics"] = {"enabled": True, "listen": listen}
    d.write_config(sections)
    d.sections = sections
    d.start()
    return d, sim


def test_a_scrape_reports_the_sim_gpu_and_the_host(make_daemon, sleeper):
    port = free_port()
    d, sim = start(make_daemon, f"127.0.0.1:{port}",
                   gpus=[{"index": 1, "name": "Sim 24G", "total_bytes": 24 * GiB, "temperature_c": 47.5,
                          "utilization_percent": 30}])
    simfile.book(sim, 0, sleeper.pid, 5 * GiB)

    def used_on_gpu0(expected: int):
        m = scrape(port)
        return m if by_gpu(m, "memwarden_gpu_memory_used_bytes")["0"].value == expected else None

    m = wait_until(lambda: used_on_gpu0(5 * GiB), timeout=10, message="5 GiB used on GPU 0 in a scrape")
    total = by_gpu(m, "memwarden_gpu_memory_total_bytes")
    assert {g: (s.labels["name"], s.labels["uuid"], s.value) for g, s in total.items()} == {
        "0": ("Sim 12G", "SIM-0", 12 * GiB), "1": ("Sim 24G", "SIM-1", 24 * GiB)}
    assert by_gpu(m, "memwarden_gpu_memory_free_bytes")["0"].value == 7 * GiB
    assert by_gpu(m, "memwarden_gpu_memory_used_bytes")["1"].value == 0
    # Temperature and utilization where the sim file gives them (GPU 1), absent where it does not (GPU 0).
    assert {g: s.value for g, s in by_gpu(m, "memwarden_gpu_temperature_celsius").items()} == {"1": 47.5}
    assert {g: s.value for g, s in by_gpu(m, "memwarden_gpu_utilization_ratio").items()} == {"1": 0.3}
    assert {g: s.value for g, s in by_gpu(m, "memwarden_gpu_leases").items()} == {"0": 0, "1": 0}

    # This machine's memory, as the daemon's host probe reads it.
    (mem_total,) = m["memwarden_host_memory_total_bytes"]
    assert mem_total.value == psutil.virtual_memory().total
    (available,) = m["memwarden_host_memory_available_bytes"]
    assert 0 < available.value <= mem_total.value
    assert m["memwarden_host_swap_total_bytes"][0].value == psutil.swap_memory().total
    has_psi = Path("/proc/pressure/memory").exists() and d.call("host")["psi_available"]
    assert ("memwarden_host_pressure_memory_some_avg10_ratio" in m) == bool(has_psi)

    assert [s.labels["version"] for s in m["memwarden_build_info"]] == [__version__]
    assert {s.labels["probe"]: s.value for s in m["memwarden_probe_up"]} == {"host": 1, "gpu": 1}
    assert m["memwarden_samples_total"][0].value >= 1
    started = [e for e in d.log_events() if e.get("event") == "metrics listening"]
    assert [e["listen"] for e in started] == [f"127.0.0.1:{port}"]
    assert "prometheus_client" in d.call("diagnostics")["optional_modules_loaded"]

    # Scrapes follow the machine: the booked process ends and its VRAM shows free.
    sleeper.kill()
    sleeper.wait()
    wait_until(lambda: used_on_gpu0(0), timeout=10, message="GPU 0 free again in a scrape")


def test_a_port_in_use_keeps_the_daemon_running_and_alerts_until_it_is_free(make_daemon):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    listen = f"127.0.0.1:{port}"
    try:
        d, _ = start(make_daemon, listen)  # ready despite the port: it keeps guarding the machine

        def alert():
            return next((a for a in d.call("alerts")["active"] if a["kind"] == "metrics.unavailable"), None)

        raised = wait_until(alert, timeout=30, message="a metrics.unavailable alert")  # after its hold
        assert raised["key"] == listen
        assert raised["message"] == f"metrics not served: cannot listen on metrics.listen {listen}: " \
            f"{os.strerror(errno.EADDRINUSE)}"
        errors = [e for e in d.log_events()
                  if "cannot listen on metrics.listen" in e.get("event", "") and "alert_kind" not in e]
        assert len(errors) == 1 and errors[0]["listen"] == listen  # logged once, though retried every pass
    finally:
        holder.close()
    wait_until(lambda: scrape_or_none(port), timeout=10, message="metrics served once the port is free")
    wait_until(lambda: alert() is None, timeout=30, message="the metrics.unavailable alert resolved")
    assert d.proc.poll() is None
