"""The daemon's state as Prometheus metric families, built at scrape time.

Scrapes are answered on the daemon's asyncio loop (server.py), so collect() reads the snapshots and state the
sample pass left behind without locks: the snapshots are frozen and the pass only swaps references. Nothing
here is updated per pass, so a daemon that is never scraped pays nothing for its metrics. Data that does not
exist (no GPU, a kernel without PSI, container watching off, no run in progress) yields no samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from memwarden import __version__
from memwarden.logs import get_logger
from memwarden.metrics.catalogue import BY_NAME
from memwarden.policies.host_memory import levels

if TYPE_CHECKING:
    from memwarden.services import Services

log = get_logger()

class Families:
    """Families built on first use, each checked against the catalogue; only families with samples are kept."""

    def __init__(self) -> None:
        self.made: dict[str, Metric] = {}

    def add(self, name: str, value: float, /, **labels: Any) -> None:  # positional: "name" is a GPU label
        spec = BY_NAME[name]
        if set(labels) != set(spec.labels):
            raise ValueError(f"{name}: labels {sorted(labels)} are not the catalogue's {list(spec.labels)}")
        family = self.made.get(name)
        if family is None:
            kind = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            family = self.made[name] = kind(name, spec.doc, labels=spec.labels)
        family.add_metric([str(labels[label]) for label in spec.labels], float(value))


def daemon_metrics(d: Services, out: Families) -> None:
    out.add("memwarden_build_info", 1, version=__version__)
    r = d.readings
    out.add("memwarden_start_time_seconds", r.started_at)
    out.add("memwarden_samples_total", r.samples)
    if r.last_ms is not None:
        out.add("memwarden_sample_duration_seconds", r.last_ms / 1000)
    if r.last_at is not None:
        out.add("memwarden_last_sample_timestamp_seconds", r.last_at)
    for name, runner in d.runners.items():
        out.add("memwarden_probe_up", 0 if runner.error is not None else 1, probe=name)
        if runner.last_ok_at is not None:
            out.add("memwarden_probe_last_success_timestamp_seconds", runner.last_ok_at, probe=name)


def host_metrics(d: Services, out: Families) -> None:
    snap = d.readings.host
    if snap is None or not d.fresh("host"):
        return
    out.add("memwarden_host_memory_total_bytes", snap.mem_total)
    out.add("memwarden_host_memory_available_bytes", snap.mem_available)
    out.add("memwarden_host_memory_reserve_bytes", d.config.host.reserve)
    out.add("memwarden_host_swap_total_bytes", snap.swap_total)
    out.add("memwarden_host_swap_free_bytes", max(0, snap.swap_total - snap.swap_used))
    p = snap.pressure
    if p is not None:
        out.add("memwarden_host_pressure_memory_some_avg10_ratio", p.some_avg10 / 100)
        out.add("memwarden_host_pressure_memory_some_avg60_ratio", p.some_avg60 / 100)
        out.add("memwarden_host_pressure_memory_full_avg10_ratio", p.full_avg10 / 100)
        out.add("memwarden_host_pressure_memory_full_avg60_ratio", p.full_avg60 / 100)
        out.add("memwarden_host_pressure_memory_waiting_seconds_total", p.some_total_us / 1e6)
        out.add("memwarden_host_pressure_memory_stalled_seconds_total", p.full_total_us / 1e6)
    # Only the signals this machine has: no swap or no PSI is "nothing to judge", not "ok".
    for metric, shown in levels(snap, d.readings.host_state, d.config.host).items():
        if shown.value is not None:
            out.add("memwarden_host_memory_level", int(shown.level), metric=metric)
    trend = d.readings.host_trend
    if trend is not None and trend.exhausted_in is not None:
        out.add("memwarden_host_memory_exhaustion_seconds", round(trend.exhausted_in, 1))


def gpu_metrics(d: Services, out: Families) -> None:
    snap = d.readings.gpu if d.fresh("gpu") else None
    for g in snap.gpus if snap is not None else ():
        labels = {"gpu": g.index, "uuid": g.uuid or "", "name": g.name}
        out.add("memwarden_gpu_memory_total_bytes", g.total_bytes, **labels)
        out.add("memwarden_gpu_memory_used_bytes", g.used_bytes, **labels)
        out.add("memwarden_gpu_memory_free_bytes", g.free_bytes, **labels)
        if g.temperature_c is not None:
            out.add("memwarden_gpu_temperature_celsius", g.temperature_c, **labels)
        if g.utilization_percent is not None:
            out.add("memwarden_gpu_utilization_ratio", g.utilization_percent / 100, **labels)
        for metric in ("vram", "temperature"):
            track = d.readings.gpu_state.tracks.get((metric, g.index))
            if track is not None:
                out.add("memwarden_gpu_level", int(track.level), gpu=g.index, metric=metric)


def arbiter_metrics(d: Services, out: Families) -> None:
    a = d.arbiter
    snap = d.readings.gpu
    gpus = {g.index for g in snap.gpus} if snap is not None else set()
    gpus |= {lease.gpu for lease in a.leases.values()}
    for index in sorted(gpus):
        on = [lease for lease in a.leases.values() if lease.gpu == index]
        out.add("memwarden_gpu_leases", len(on), gpu=index)
        out.add("memwarden_gpu_lease_bytes", sum(lease.size for lease in on), gpu=index)
    if snap is not None and snap.gpus and d.fresh("gpu"):
        for view in a.gpu_view(snap):
            out.add("memwarden_gpu_leasable_bytes", view.leasable_bytes, gpu=view.index)
            out.add("memwarden_gpu_model_budget_bytes", view.model_budget_bytes, gpu=view.index)
    out.add("memwarden_gpu_lease_grants_total", a.stats["grants"])
    out.add("memwarden_gpu_lease_refusals_total", a.stats["refusals"])
    out.add("memwarden_scheduler_hits_total", a.stats["hits"])
    out.add("memwarden_scheduler_misses_total", a.stats["misses"])
    out.add("memwarden_scheduler_evictions_total", a.stats["evictions"])
    resident = a.cache.resident()
    out.add("memwarden_scheduler_resident_models", len(resident))
    out.add("memwarden_scheduler_resident_bytes", sum(e.size for e in resident))
    if d.proxy is not None:
        out.add("memwarden_proxy_requests_total", d.proxy.requests)
        out.add("memwarden_proxy_preemptions_total", d.proxy.preemptions)
        out.add("memwarden_proxy_loads_started_total", d.proxy.queue.swaps)
        out.add("memwarden_proxy_overdue_total", d.proxy.queue.overdue)
        out.add("memwarden_proxy_queued_requests", len(d.proxy.queue.waiting))


def container_metrics(d: Services, out: Families) -> None:
    watch = d.containers
    if watch is None or watch.last is None or not d.fresh("containers"):
        return
    for c in watch.last.containers:
        labels = {"container": c.name, "id": c.id[:12]}
        out.add("memwarden_container_memory_working_set_bytes", c.working_set, **labels)
        out.add("memwarden_container_memory_usage_bytes", c.usage, **labels)
        if c.rss is not None:
            out.add("memwarden_container_memory_rss_bytes", c.rss, **labels)
        if c.limit > 0:  # 0 means no limit: a 0 series would draw a limit at the floor
            out.add("memwarden_container_memory_limit_bytes", c.limit, **labels)
        series = watch.series.get(c.name)
        verdict = series.verdict if series is not None and series.container_id == c.id else None
        if verdict is None:
            continue
        out.add("memwarden_container_memory_leak_slope_bytes_per_second", verdict.slope, **labels)
        out.add("memwarden_container_memory_leaking", int(verdict.leaking or series.idle_leak), **labels)
        if verdict.leaking and verdict.exhaustion_in is not None:
            out.add("memwarden_container_memory_exhaustion_seconds", verdict.exhaustion_in, **labels)


def training_metrics(d: Services, out: Families) -> None:
    # Every state, at 0 when no run is in it: a dashboard's "failed" panel reads 0 rather than "no data".
    for state, n in d.learning.runs.count_by_state().items():
        out.add("memwarden_training_runs", n, state=state)
    for wait in d.learning.execution.waiting():
        labels = {"adapter": wait.adapter, "run": wait.run_id}
        out.add("memwarden_training_gpu_wait_seconds", wait.waited_s, **labels)
        out.add("memwarden_training_blocked", int(wait.action in ("blocked", "held")), **labels)
    for version in d.learning.versions.listing():
        if version["active"]:
            recall_metrics(version["adapter"], d.learning.runs.recall(version["run_id"]), out)
    cur = d.learning.current
    if cur is None or cur.start is None or cur.steps.last is None:
        return
    step, start = cur.steps.last, cur.start
    labels = {"adapter": cur.adapter, "run": cur.run_id, "phase": "dry_run" if cur.dry_run else "train"}
    out.add("memwarden_training_step", step["step"], **labels)
    if start.get("steps"):
        out.add("memwarden_training_progress_ratio", min(1.0, step["step"] / start["steps"]), **labels)
    for key, name in (("loss", "memwarden_training_loss"), ("grad_norm", "memwarden_training_grad_norm"),
                      ("tokens_per_s", "memwarden_training_tokens_per_second")):
        if step.get(key) is not None:  # a NaN loss arrives as null (training/events.py)
            out.add(name, step[key], **labels)


def recall_metrics(adapter: str, ev: dict, out: Families) -> None:
    for set_name, prefix in (("run", "recall"), ("heldout", "recall_heldout"), ("probe", "probe_recall_after")):
        if not ev.get(f"{prefix}_memories"):
            continue  # not measured: no sample rather than a 0 that reads as "forgot everything"
        out.add("memwarden_training_recall_ratio", ev[prefix], adapter=adapter, set=set_name)
        if ev.get(f"{prefix}_token_accuracy") is not None:
            out.add("memwarden_training_recall_token_accuracy", ev[f"{prefix}_token_accuracy"], adapter=adapter,
                    set=set_name)
    for when in ("before", "after"):
        if isinstance(ev.get(f"general_loss_{when}"), int | float):
            out.add("memwarden_training_general_probe_loss", ev[f"general_loss_{when}"], adapter=adapter, when=when)
        if ev.get("dpo_steps") and isinstance(ev.get(f"preference_accuracy_{when}"), int | float):
            out.add("memwarden_training_preference_accuracy", ev[f"preference_accuracy_{when}"], adapter=adapter,
                    when=when)


def alert_metrics(d: Services, out: Families) -> None:
    for alert in d.dispatcher.active.values():
        c = alert.condition
        out.add("memwarden_alerts_active", 1, kind=c.kind, key=c.key, severity=c.severity)
    for (kind, severity), n in sorted(d.dispatcher.raised.items()):
        out.add("memwarden_alerts_raised_total", n, kind=kind, severity=severity)


SECTIONS: tuple[Callable[[Services, Families], None], ...] = (
    daemon_metrics, host_metrics, gpu_metrics, arbiter_metrics, container_metrics, training_metrics,
    alert_metrics)


class DaemonCollector(Collector):
    def __init__(self, services: Services):
        self.services = services
        self._failing: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        out = Families()
        for section in SECTIONS:
            before = dict(out.made)
            try:
                section(self.services, out)
            except Exception:  # one broken section must not take every metric down with it
                out.made = before  # no half-filled families
                if section.__name__ not in self._failing:
                    log.exception("metrics section failed; its families are left out", section=section.__name__)
                    self._failing.add(section.__name__)
            else:
                self._failing.discard(section.__name__)
        yield from out.made.values()
