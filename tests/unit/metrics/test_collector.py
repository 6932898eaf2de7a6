import json
import os

import pytest

from memwarden import __version__
from memwarden.learning import runs as run_states
from memwarden.learning.leasing import Refused
from memwarden.learning.progress import CurrentRun
from memwarden.metrics import collector
from memwarden.metrics.catalogue import FAMILIES
from memwarden.policies.host_trend import HostTrend
from memwarden.policies.leak import LeakVerdict
from memwarden.policies.placement import available
from memwarden.proxy.server import OllamaProxy
from memwarden.snapshots import GpuSnapshot, LoadedModel, Pressure

from .conftest import T0, GiB, MiB, World, container, gpu, host, scrape, value

PSI = Pressure(some_avg10=12.5, some_avg60=4.0, some_total_us=7_500_000, full_avg10=2.5, full_avg60=1.0,
               full_total_us=1_250_000)


async def busy_daemon(make):
    """A daemon with every kind of data: PSI, two GPUs, leases, scheduler use, a leaking container, a run in
    progress, an alert and the proxy."""
    world = World(
        host=host(mem_total=32 * GiB, mem_available=GiB, swap_total=8 * GiB, swap_used=3 * GiB, pressure=PSI),
        gpu=GpuSnapshot("sim", (gpu(0, 12 * GiB, 3 * GiB, temperature_c=61.0, utilization_percent=35.0),
                                gpu(1, 24 * GiB, 0)), T0),
        containers=[container("web", 100 * MiB, limit=GiB, rss=60 * MiB), container("db", 300 * MiB)])
    h = await make(world, containers={"enabled": True, "leak_window": "5s", "leak_min_rate": "1KiB/s"},
                   learning={"enabled": False})
    for i in range(8):  # web leaks 1 MiB/s, db holds steady
        world.containers = [container("web", 100 * MiB + i * MiB, limit=GiB, rss=60 * MiB),
                            container("db", 300 * MiB)]
        await h.sample()
    d = h.services
    d.readings.host_trend = HostTrend(LeakVerdict("leak", MiB, MiB, 100, 3600.0, 0, 1024.0, "host", scale=600.0),
                                      1024.0, True, None)  # used RAM growing 1 MiB/s: the GiB available in 17 min
    lease = await d.arbiter.acquire(2 * GiB, "test", pid=os.getpid(), gpu=0)
    d.arbiter.observe([LoadedModel("small:latest", 3 * GiB, 3 * GiB)], d.readings.gpu)
    d.arbiter.note_use("small:latest", None)
    d.arbiter.note_use("small:latest", None)
    d.proxy = OllamaProxy(d.arbiter, d.config.proxy, "http://127.0.0.1:9")
    d.proxy.requests, d.proxy.preemptions = 5, 1  # what handle() and admit() count
    d.proxy.queue.swaps, d.proxy.queue.overdue = 3, 2  # what the queue counts as it sends
    for run_id, state in (("r1", "promoted"), ("r2", "promoted"), ("r3", "failed"), ("r4", "running")):
        d.learning.runs.insert(run_id, "alice", "alice", "threshold", T0, "lora")
        d.learning.runs.set_state(run_id, state)
    d.learning.runs.update("r2", eval=json.dumps({"recall": 0.9, "recall_recalled": 36, "recall_memories": 40,
                                                  "recall_token_accuracy": 0.95, "recall_heldout": 0.75,
                                                  "recall_heldout_recalled": 30, "recall_heldout_memories": 40,
                                                  "recall_heldout_token_accuracy": 0.9, "probe_recall_after": 0.5,
                                                  "probe_recall_after_recalled": 10, "probe_recall_after_memories": 20,
                                                  "probe_recall_after_token_accuracy": None,
                                                  "general_loss_before": 0.32, "general_loss_after": 0.33,
                                                  "dpo_steps": 40, "preference_accuracy_before": 0.5,
                                                  "preference_accuracy_after": 0.8}))
    d.learning.versions.promote("alice", 1, "r1", "/v1", T0)
    d.learning.versions.promote("alice", 2, "r2", "/v2", T0 + 1)
    d.learning.runs.insert("r5", "bob", "bob", "threshold", T0, "lora")
    d.learning.runs.set_state("r5", "waiting")
    d.learning.execution.weigh_wait("r5", "bob", Refused("cannot lease", ("model big 6.0 GiB, pinned",)))
    d.learning.execution.current = current = CurrentRun("r4", "alice")
    current.record({"event": "start", "steps": 40, "dry_run": False, "max_steps": 40})
    for step in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10):
        current.record({"event": "step", "step": step, "loss": 3.0 - step / 10, "grad_norm": 0.9,
                        "tokens_per_s": 1200.0 + step})
    return h, lease


async def test_a_run_waiting_for_the_gpu_shows_its_wait_and_whether_it_is_blocked(make):
    h = await make(learning={"enabled": False, "gpu_wait": "1m"})
    mono = [1000.0]
    ex = h.services.learning.execution
    ex.monotonic = lambda: mono[0]
    h.services.learning.runs.insert("r1", "bob", "bob", "threshold", T0, "lora")
    h.services.learning.runs.set_state("r1", "waiting")
    refused = Refused("cannot lease", ("model big 6.0 GiB, pinned",))
    ex.weigh_wait("r1", "bob", refused)
    mono[0] += 30
    ex.weigh_wait("r1", "bob", refused)
    m = scrape(h.services)
    assert value(m, "memwarden_training_gpu_wait_seconds", adapter="bob", run="r1") == 30
    assert value(m, "memwarden_training_blocked", adapter="bob", run="r1") == 0
    mono[0] += 30
    ex.weigh_wait("r1", "bob", refused)
    assert value(scrape(h.services), "memwarden_training_blocked", adapter="bob", run="r1") == 1
    h.services.learning.runs.set_state("r1", "cancelled")
    assert "memwarden_training_blocked" not in scrape(h.services), "a cancelled run waits no more"


async def test_host_families_carry_the_snapshot(make):
    h = await make(World(host=host(pressure=PSI)))
    await h.sample()
    snap = h.world.host
    m = scrape(h.services)
    assert value(m, "memwarden_host_memory_total_bytes") == snap.mem_total
    assert value(m, "memwarden_host_memory_available_bytes") == snap.mem_available
    assert value(m, "memwarden_host_memory_reserve_bytes") == h.services.config.host.reserve
    assert value(m, "memwarden_host_swap_total_bytes") == snap.swap_total
    assert value(m, "memwarden_host_swap_free_bytes") == snap.swap_total - snap.swap_used
    assert value(m, "memwarden_host_pressure_memory_some_avg10_ratio") == pytest.approx(PSI.some_avg10 / 100)
    assert value(m, "memwarden_host_pressure_memory_some_avg60_ratio") == pytest.approx(PSI.some_avg60 / 100)
    assert value(m, "memwarden_host_pressure_memory_full_avg10_ratio") == pytest.approx(PSI.full_avg10 / 100)
    assert value(m, "memwarden_host_pressure_memory_full_avg60_ratio") == pytest.approx(PSI.full_avg60 / 100)
    assert value(m, "memwarden_host_pressure_memory_waiting_seconds_total") == pytest.approx(PSI.some_total_us / 1e6)
    assert value(m, "memwarden_host_pressure_memory_stalled_seconds_total") == pytest.approx(PSI.full_total_us / 1e6)


async def test_levels_follow_the_policies(make):
    world = World(host=host(mem_total=32 * GiB, mem_available=32 * GiB // 2, pressure=PSI))
    h = await make(world)
    await h.sample()
    m = scrape(h.services)
    # 50 % RAM, 25 % swap, PSI 12.5 (warn 10): only psi is raised.
    assert {s.labels["metric"]: s.value for s in m["memwarden_host_memory_level"]} == \
        {"ram": 0, "swap": 0, "psi": 1}
    world.host = host(mem_total=32 * GiB, mem_available=GiB, pressure=PSI)  # 97 % used: critical
    world.gpu = GpuSnapshot("sim", (gpu(0, 10 * GiB, int(9.5 * GiB), temperature_c=50.0),), T0)  # 95 %: warning
    await h.sample()
    m = scrape(h.services)
    assert value(m, "memwarden_host_memory_level", metric="ram") == 2
    assert value(m, "memwarden_gpu_level", gpu=0, metric="vram") == 1
    assert value(m, "memwarden_gpu_level", gpu=0, metric="temperature") == 0
    # The same levels raised alerts: active ones by kind/key/severity, and counted once when raised.
    active = {(s.labels["kind"], s.labels["key"], s.labels["severity"]) for s in m["memwarden_alerts_active"]}
    assert active == {("host.ram", "host", "critical"), ("host.psi", "host", "warning"),
                      ("gpu.vram", "gpu0", "warning")}
    assert value(m, "memwarden_alerts_raised_total", kind="host.ram", severity="critical") == 1
    await h.sample()
    assert value(scrape(h.services), "memwarden_alerts_raised_total", kind="host.ram", severity="critical") == 1


async def test_gpu_families_per_gpu_with_their_labels(make):
    h, _ = await busy_daemon(make)
    d = h.services
    m = scrape(d)
    labels = {(s.labels["gpu"], s.labels["uuid"], s.labels["name"]) for s in m["memwarden_gpu_memory_total_bytes"]}
    assert labels == {("0", "SIM-0", "Sim 12G"), ("1", "SIM-1", "Sim 24G")}
    for g in d.readings.gpu.gpus:
        assert value(m, "memwarden_gpu_memory_total_bytes", gpu=g.index) == g.total_bytes
        assert value(m, "memwarden_gpu_memory_used_bytes", gpu=g.index) == g.used_bytes
        assert value(m, "memwarden_gpu_memory_free_bytes", gpu=g.index) == g.free_bytes
    # Temperature and utilization only where the backend reports them.
    assert [s.labels["gpu"] for s in m["memwarden_gpu_temperature_celsius"]] == ["0"]
    assert value(m, "memwarden_gpu_temperature_celsius", gpu=0) == 61.0
    assert value(m, "memwarden_gpu_utilization_ratio", gpu=0) == pytest.approx(0.35)
    assert [s.labels["gpu"] for s in m["memwarden_gpu_utilization_ratio"]] == ["0"]


async def test_leases_and_scheduler(make):
    h, lease = await busy_daemon(make)
    d = h.services
    m = scrape(d)
    assert value(m, "memwarden_gpu_leases", gpu=0) == 1 and value(m, "memwarden_gpu_leases", gpu=1) == 0
    assert value(m, "memwarden_gpu_lease_bytes", gpu=0) == lease["size"] == 2 * GiB
    assert value(m, "memwarden_gpu_lease_bytes", gpu=1) == 0
    held = d.arbiter.held(d.readings.gpu)
    for g in d.readings.gpu.gpus:
        assert value(m, "memwarden_gpu_leasable_bytes", gpu=g.index) == available(g, held, d.config.gpu.reserve)
        assert value(m, "memwarden_gpu_model_budget_bytes", gpu=g.index) == d.arbiter.budget(d.readings.gpu, g.index)
    # The lease takes its bytes off GPU 0's leasable VRAM and model budget, not GPU 1's.
    assert value(m, "memwarden_gpu_model_budget_bytes", gpu=0) == 12 * GiB - d.config.gpu.reserve - 2 * GiB
    assert value(m, "memwarden_gpu_lease_grants_total") == 1
    assert value(m, "memwarden_gpu_lease_refusals_total") == 0
    assert value(m, "memwarden_scheduler_hits_total") == 2
    assert value(m, "memwarden_scheduler_misses_total") == 0
    assert value(m, "memwarden_scheduler_evictions_total") == 0
    assert value(m, "memwarden_scheduler_resident_models") == 1
    assert value(m, "memwarden_scheduler_resident_bytes") == 3 * GiB
    assert value(m, "memwarden_proxy_requests_total") == 5
    assert value(m, "memwarden_proxy_preemptions_total") == 1
    assert value(m, "memwarden_proxy_loads_started_total") == 3
    assert value(m, "memwarden_proxy_overdue_total") == 2
    assert value(m, "memwarden_proxy_queued_requests") == 0
    await d.arbiter.release(lease["id"])
    m = scrape(d)
    assert value(m, "memwarden_gpu_leases", gpu=0) == 0 and value(m, "memwarden_gpu_lease_bytes", gpu=0) == 0


async def test_containers_working_set_limit_and_leak_slope(make):
    h, _ = await busy_daemon(make)
    m = scrape(h.services)
    web = {"container": "web", "id": ("web" * 8)[:12]}
    db = {"container": "db", "id": ("db" * 8)[:12]}
    assert value(m, "memwarden_container_memory_working_set_bytes", **web) == 107 * MiB
    assert value(m, "memwarden_container_memory_usage_bytes", **web) == 117 * MiB
    assert value(m, "memwarden_container_memory_rss_bytes", **web) == 60 * MiB
    assert value(m, "memwarden_container_memory_limit_bytes", **web) == GiB
    assert value(m, "memwarden_container_memory_leak_slope_bytes_per_second", **web) == pytest.approx(MiB, rel=0.05)
    assert value(m, "memwarden_container_memory_leaking", **web) == 1
    verdict = h.services.containers.series["web"].verdict
    assert value(m, "memwarden_container_memory_exhaustion_seconds", **web) == pytest.approx(verdict.exhaustion_in)
    assert value(m, "memwarden_container_memory_leak_slope_bytes_per_second", **db) == 0
    assert value(m, "memwarden_container_memory_leaking", **db) == 0
    # No limit, no rss, no leak: absent, not zero.
    for name in ("memwarden_container_memory_limit_bytes", "memwarden_container_memory_rss_bytes",
                 "memwarden_container_memory_exhaustion_seconds"):
        assert [s.labels["container"] for s in m[name]] == ["web"], name
    assert value(m, "memwarden_alerts_active", kind="container.leak", key="web") == 1


async def test_training_progress_and_runs_by_state(make):
    h, _ = await busy_daemon(make)
    m = scrape(h.services)
    run = {"adapter": "alice", "run": "r4", "phase": "train"}
    assert value(m, "memwarden_training_progress_ratio", **run) == pytest.approx(10 / 40)
    assert value(m, "memwarden_training_step", **run) == 10
    assert value(m, "memwarden_training_loss", **run) == pytest.approx(2.0)
    assert value(m, "memwarden_training_grad_norm", **run) == pytest.approx(0.9)
    assert value(m, "memwarden_training_tokens_per_second", **run) == pytest.approx(1210.0)
    runs = {s.labels["state"]: s.value for s in m["memwarden_training_runs"]}
    assert set(runs) == set(run_states.STATES)
    assert (runs["promoted"], runs["failed"], runs["running"], runs["queued"]) == (2, 1, 1, 0)
    # A NaN loss arrives as null: the loss is left out, the step still counts.
    h.services.learning.current.record({"event": "step", "step": 11, "loss": None, "nan": True,
                                        "grad_norm": None, "tokens_per_s": 1000.0})
    m = scrape(h.services)
    assert value(m, "memwarden_training_step", **run) == 11
    assert "memwarden_training_loss" not in m and "memwarden_training_grad_norm" not in m


async def test_recall_of_each_active_version(make):
    h, _ = await busy_daemon(make)
    m = scrape(h.services)
    assert value(m, "memwarden_training_recall_ratio", adapter="alice", set="run") == pytest.approx(0.9)
    assert value(m, "memwarden_training_recall_ratio", adapter="alice", set="probe") == pytest.approx(0.5)
    assert value(m, "memwarden_training_recall_token_accuracy", adapter="alice", set="run") == pytest.approx(0.95)
    assert value(m, "memwarden_training_recall_ratio", adapter="alice", set="heldout") == pytest.approx(0.75)
    assert {s.labels["set"] for s in m["memwarden_training_recall_token_accuracy"]} == {"run", "heldout"}
    h.services.learning.versions.activate("alice", 1)  # v1's run measured no recall
    assert "memwarden_training_recall_ratio" not in scrape(h.services)


@pytest.mark.parametrize("family, before, after", [("memwarden_training_general_probe_loss", 0.32, 0.33),
                                                   ("memwarden_training_preference_accuracy", 0.5, 0.8)])
async def test_general_probe_loss_and_preference_accuracy_of_each_active_version_before_and_after_its_run(
        make, family, before, after):
    h, _ = await busy_daemon(make)
    m = scrape(h.services)
    assert value(m, family, adapter="alice", when="before") == pytest.approx(before)
    assert value(m, family, adapter="alice", when="after") == pytest.approx(after)
    h.services.learning.versions.activate("alice", 1)  # v1's run had no general probe and no DPO stage
    assert family not in scrape(h.services)


async def test_a_dry_run_phase_is_labelled_and_reset_between_phases(make):
    h = await make()
    learning = h.services.learning
    learning.execution.current = current = CurrentRun("r1", "bob")
    current.record({"event": "start", "steps": 4, "dry_run": True})
    current.record({"event": "step", "step": 4, "loss": 1.0})
    m = scrape(h.services)
    assert value(m, "memwarden_training_progress_ratio", adapter="bob", run="r1", phase="dry_run") == 1.0
    current.new_phase()  # what the execution does before the next phase
    assert "memwarden_training_progress_ratio" not in scrape(h.services)


async def test_daemon_families(make):
    h = await make()
    await h.sample(passes=3)
    d = h.services
    m = scrape(d)
    assert value(m, "memwarden_build_info", version=__version__) == 1
    assert value(m, "memwarden_start_time_seconds") == d.readings.started_at
    assert value(m, "memwarden_samples_total") == 3
    assert value(m, "memwarden_sample_duration_seconds") == pytest.approx(d.readings.last_ms / 1000)
    assert value(m, "memwarden_last_sample_timestamp_seconds") == d.readings.last_at
    assert {s.labels["probe"]: s.value for s in m["memwarden_probe_up"]} == {"host": 1, "gpu": 1}
    assert value(m, "memwarden_probe_last_success_timestamp_seconds", probe="gpu") == \
        d.runners["gpu"].last_ok_at


async def test_absent_data_yields_no_samples(make):
    # No GPU, no PSI, no swap, containers off, no run, no alert, no proxy.
    h = await make(World(host=host(swap_total=0, swap_used=0, pressure=None), gpu=GpuSnapshot("none", (), T0)))
    await h.sample()
    m = scrape(h.services)
    present = set(m)
    assert not {n for n in present if n.startswith(("memwarden_gpu_memory", "memwarden_gpu_temperature",
                                                    "memwarden_gpu_utilization", "memwarden_gpu_level",
                                                    "memwarden_gpu_leas", "memwarden_gpu_model"))} - {
        "memwarden_gpu_lease_grants_total", "memwarden_gpu_lease_refusals_total"}
    assert not {n for n in present if "pressure" in n or "container" in n or "proxy" in n}
    assert not {n for n in present if n.startswith("memwarden_training_") and n != "memwarden_training_runs"}
    assert "memwarden_alerts_active" not in present and "memwarden_alerts_raised_total" not in present
    # Without swap or PSI only RAM has a level: "nothing to judge" is not "ok".
    assert [s.labels["metric"] for s in m["memwarden_host_memory_level"]] == ["ram"]
    assert value(m, "memwarden_host_swap_total_bytes") == 0
    assert {s.labels["probe"] for s in m["memwarden_probe_up"]} == {"host", "gpu"}


async def test_a_degraded_probe_drops_its_stale_families(make):
    world = World(containers=[container("web", 100 * MiB)])
    h = await make(world, containers={"enabled": True})
    await h.sample()
    assert "memwarden_gpu_memory_used_bytes" in scrape(h.services)
    world.gpu = RuntimeError("NVML: GPU is lost")
    world.containers = ConnectionError("docker unreachable")
    await h.sample()
    m = scrape(h.services)
    assert value(m, "memwarden_probe_up", probe="gpu") == 0
    assert value(m, "memwarden_probe_up", probe="containers") == 0
    assert value(m, "memwarden_probe_up", probe="host") == 1
    assert h.services.readings.gpu is not None  # the daemon still holds the old reading ...
    assert not [n for n in m if n.startswith("memwarden_gpu_memory") or n == "memwarden_gpu_leasable_bytes"]
    assert not [n for n in m if n.startswith("memwarden_container_")]  # ... but it is not reported as current
    assert value(m, "memwarden_gpu_leases", gpu=0) == 0  # leases are the daemon's own, not a reading
    assert value(m, "memwarden_alerts_active", kind="probe.degraded", key="gpu") == 1


async def test_every_catalogued_family_can_be_emitted_with_its_type(make):
    h, _ = await busy_daemon(make)
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    registry.register(collector.DaemonCollector(h.services))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for spec in FAMILIES:
        family_name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
        assert family_name in families, f"{spec.name} is catalogued but never emitted"
        family = families[family_name]
        assert family.type == spec.kind, spec.name
        assert {s.name for s in family.samples} == {spec.name}
        assert all(set(s.labels) == set(spec.labels) for s in family.samples), spec.name


async def test_a_failing_section_leaves_the_others(make, monkeypatch):
    h = await make()
    await h.sample()

    def broken(d, out):
        out.add("memwarden_training_runs", 1, state="queued")
        raise RuntimeError("boom")

    logged = []
    monkeypatch.setattr(collector, "SECTIONS", (collector.daemon_metrics, broken, collector.host_metrics))
    monkeypatch.setattr(collector.log, "exception", lambda msg, **kw: logged.append(kw["section"]))
    c = collector.DaemonCollector(h.services)
    for _ in range(2):
        names = {f.name for f in c.collect()}
        assert "memwarden_training_runs" not in names  # the half-built family is dropped
        assert {"memwarden_build_info", "memwarden_host_memory_total_bytes"} <= names
    assert logged == ["broken"]  # once, not every scrape


def test_labels_must_match_the_catalogue():
    out = collector.Families()
    with pytest.raises(ValueError, match="memwarden_gpu_leases"):
        out.add("memwarden_gpu_leases", 1, gpu=0, uuid="x")
    with pytest.raises(KeyError):
        out.add("memwarden_not_catalogued", 1)
