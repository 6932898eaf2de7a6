"""Every metric family the collector may emit: its sample name, type, labels and help text.

The collector refuses a name or a label set that is not here, and the tests check docs/metrics.md and the Grafana
dashboard against this table, so the three cannot drift apart. Plain data: no prometheus_client import.
Names follow node_exporter and DCGM: base units in the name (_bytes, _seconds, _celsius, _ratio for 0..1),
_total for counters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str  # as scraped: a counter's name ends in _total
    kind: str  # "gauge" or "counter"
    labels: tuple[str, ...]
    doc: str


GPU = ("gpu", "uuid", "name")
CONTAINER = ("container", "id")
RUN = ("adapter", "run", "phase")

FAMILIES: tuple[Family, ...] = (
    # the daemon itself
    Family("memwarden_build_info", "gauge", ("version",), "Always 1; the version of memwarden serving."),
    Family("memwarden_start_time_seconds", "gauge", (), "When the daemon started (Unix time)."),
    Family("memwarden_samples_total", "counter", (), "Sample passes completed."),
    Family("memwarden_sample_duration_seconds", "gauge", (), "How long the last sample pass took."),
    Family("memwarden_last_sample_timestamp_seconds", "gauge", (), "When the last sample pass completed."),
    Family("memwarden_probe_up", "gauge", ("probe",), "1 when the probe's last read succeeded, 0 when degraded."),
    Family("memwarden_probe_last_success_timestamp_seconds", "gauge", ("probe",),
           "When the probe last returned a reading."),
    # host memory
    Family("memwarden_host_memory_total_bytes", "gauge", (), "RAM installed (MemTotal)."),
    Family("memwarden_host_memory_available_bytes", "gauge", (), "RAM available without swapping (MemAvailable)."),
    Family("memwarden_host_memory_reserve_bytes", "gauge", (), "host.reserve: RAM admission never plans to use."),
    Family("memwarden_host_swap_total_bytes", "gauge", (), "Swap configured."),
    Family("memwarden_host_swap_free_bytes", "gauge", (), "Swap not in use."),
    Family("memwarden_host_pressure_memory_some_avg10_ratio", "gauge", (),
           "Share of the last 10 s some task stalled on memory (PSI some avg10 / 100)."),
    Family("memwarden_host_pressure_memory_some_avg60_ratio", "gauge", (), "PSI some avg60 / 100."),
    Family("memwarden_host_pressure_memory_full_avg10_ratio", "gauge", (),
           "Share of the last 10 s all tasks stalled on memory (PSI full avg10 / 100)."),
    Family("memwarden_host_pressure_memory_full_avg60_ratio", "gauge", (), "PSI full avg60 / 100."),
    Family("memwarden_host_pressure_memory_waiting_seconds_total", "counter", (),
           "Time some task stalled on memory (PSI some total)."),
    Family("memwarden_host_pressure_memory_stalled_seconds_total", "counter", (),
           "Time all tasks stalled on memory (PSI full total)."),
    Family("memwarden_host_memory_level", "gauge", ("metric",),
           "Alert level of ram, swap or psi after hysteresis and hold: 0 ok, 1 warning, 2 critical."),
    Family("memwarden_host_memory_exhaustion_seconds", "gauge", (),
           "While used RAM trends upward: seconds until the available RAM is used up at that trend."),
    # GPUs
    Family("memwarden_gpu_memory_total_bytes", "gauge", GPU, "VRAM of the GPU."),
    Family("memwarden_gpu_memory_used_bytes", "gauge", GPU, "VRAM in use."),
    Family("memwarden_gpu_memory_free_bytes", "gauge", GPU, "VRAM free."),
    Family("memwarden_gpu_temperature_celsius", "gauge", GPU, "GPU temperature, where the backend reports it."),
    Family("memwarden_gpu_utilization_ratio", "gauge", GPU, "GPU busy share, where the backend reports it."),
    Family("memwarden_gpu_level", "gauge", ("gpu", "metric"),
           "Alert level of vram or temperature: 0 ok, 1 warning, 2 critical."),
    # leases and the scheduler
    Family("memwarden_gpu_leases", "gauge", ("gpu",), "Active VRAM leases on the GPU."),
    Family("memwarden_gpu_lease_bytes", "gauge", ("gpu",), "VRAM promised to active leases on the GPU."),
    Family("memwarden_gpu_leasable_bytes", "gauge", ("gpu",),
           "VRAM a new lease could get now without evicting: free − gpu.reserve − what leases may still use."),
    Family("memwarden_gpu_model_budget_bytes", "gauge", ("gpu",),
           "VRAM the scheduler may fill with models: total − gpu.reserve − leases."),
    Family("memwarden_gpu_lease_grants_total", "counter", (), "Leases granted since the daemon started."),
    Family("memwarden_gpu_lease_refusals_total", "counter", (), "Lease requests refused since the daemon started."),
    Family("memwarden_scheduler_hits_total", "counter", (), "Requests for a model that was resident."),
    Family("memwarden_scheduler_misses_total", "counter", (), "Requests for a model that had to be loaded."),
    Family("memwarden_scheduler_evictions_total", "counter", (),
           "Models unloaded to make room (for a model or a lease)."),
    Family("memwarden_scheduler_resident_models", "gauge", (), "Models resident in Ollama, as the scheduler sees."),
    Family("memwarden_scheduler_resident_bytes", "gauge", (), "VRAM of the resident models (measured or estimated)."),
    Family("memwarden_proxy_requests_total", "counter", (), "Requests through the Ollama proxy."),
    Family("memwarden_proxy_preemptions_total", "counter", (), "Preemptible leases the proxy asked to yield."),
    Family("memwarden_proxy_loads_started_total", "counter", (),
           "Requests the proxy's queue sent for a model not resident (each one load, whatever rides on it)."),
    Family("memwarden_proxy_overdue_total", "counter", (), "Requests sent because they had waited proxy.max_wait."),
    Family("memwarden_proxy_queued_requests", "gauge", (), "Requests waiting in the proxy's queue."),
    # containers
    Family("memwarden_container_memory_working_set_bytes", "gauge", CONTAINER,
           "Working set: usage − inactive file cache."),
    Family("memwarden_container_memory_usage_bytes", "gauge", CONTAINER, "cgroup memory usage."),
    Family("memwarden_container_memory_rss_bytes", "gauge", CONTAINER, "Anonymous memory, where the cgroup says."),
    Family("memwarden_container_memory_limit_bytes", "gauge", CONTAINER,
           "The container's memory limit (absent: no limit)."),
    Family("memwarden_container_memory_leak_slope_bytes_per_second", "gauge", CONTAINER,
           "Growth of the working set's lower envelope (Theil–Sen) at the scale that saw the leak, else the "
           "longest judged."),
    Family("memwarden_container_memory_leaking", "gauge", CONTAINER, "1 while the verdict is leak or idle leak."),
    Family("memwarden_container_memory_exhaustion_seconds", "gauge", CONTAINER,
           "Projected time until a leak reaches the limit (or the host's available RAM)."),
    # training
    Family("memwarden_training_runs", "gauge", ("state",), "Training runs in the state database, by state."),
    Family("memwarden_training_progress_ratio", "gauge", RUN, "Steps done / steps of the run in progress."),
    Family("memwarden_training_step", "gauge", RUN, "Last optimizer step of the run in progress."),
    Family("memwarden_training_loss", "gauge", RUN, "Training loss at the last step."),
    Family("memwarden_training_grad_norm", "gauge", RUN, "Gradient norm at the last step."),
    Family("memwarden_training_tokens_per_second", "gauge", RUN, "Trainer throughput at the last step."),
    Family("memwarden_training_gpu_wait_seconds", "gauge", ("adapter", "run"),
           "How long a run has waited for its VRAM lease (monotonic seconds since the first refusal)."),
    Family("memwarden_training_blocked", "gauge", ("adapter", "run"),
           "1 while a waiting run is past learning.gpu_wait (blocked, or held by the RAM reserve), else 0."),
    Family("memwarden_training_recall_ratio", "gauge", ("adapter", "set"),
           "Share of memories the active version gives back under greedy decoding (set: run = the memories of "
           "the run that made it, heldout = the same asked in a wording never trained, probe = earlier rounds' "
           "memories after that run)."),
    Family("memwarden_training_recall_token_accuracy", "gauge", ("adapter", "set"),
           "Mean teacher-forced token accuracy of the active version on those memories."),
    Family("memwarden_training_general_probe_loss", "gauge", ("adapter", "when"),
           "Loss on the base's general-text probe before and after the run that made the active version "
           "(when: before | after); a rise is general ability the adapter cost."),
    Family("memwarden_training_preference_accuracy", "gauge", ("adapter", "when"),
           "Share of held-out preference pairs whose chosen reply the model finds likelier than the rejected one, "
           "before and after the DPO stage of the run that made the active version (when: before | after)."),
    # alerts
    Family("memwarden_alerts_active", "gauge", ("kind", "key", "severity"), "1 for each active alert."),
    Family("memwarden_alerts_raised_total", "counter", ("kind", "severity"),
           "Alerts raised since the daemon started."),
)

BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}
