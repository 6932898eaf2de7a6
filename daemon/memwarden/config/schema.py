"""The one config schema: frozen sections whose fields carry their parser, default and doc.

The loader walks these dataclasses, so a key exists exactly when a field does; etc/memwarden.toml and the
docs/configuration.md's key table are checked against this module by the test suite.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from memwarden.config.holds import DEFAULT_RAW as DEFAULT_HOLDS
from memwarden.config.holds import Holds, holds
from memwarden.config.routes import Route, routes
from memwarden.config.values import (
    boolean,
    choice,
    cron,
    docker_url,
    duration,
    group_name,
    host_port,
    http_url,
    http_urls,
    identifiers,
    integer,
    memory_size,
    metrics_listen,
    model_dir,
    number,
    optional_path,
    rate,
    resources,
    secret_url,
    setting,
    size_between,
    text,
)


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path | None = setting(
        "", optional_path,
        "Where the SQLite state lives. Empty: $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/memwarden.")
    socket: Path | None = setting(
        "", optional_path,
        "Control socket path. Empty: $RUNTIME_DIRECTORY/control.sock (systemd), "
        "else $XDG_RUNTIME_DIR/memwarden/control.sock. Ignored when systemd passes the socket.")
    sample_interval: float = setting("2s", duration(0.1), "How often every probe is read (a sample pass).")
    dry_run: bool = setting(False, boolean, "Log every decision but take no action that changes the machine.")
    log_level: str = setting("info", choice("debug", "info", "warning", "error"), "Lowest level logged.")
    log_format: str = setting(
        "auto", choice("auto", "console", "json", "journal"),
        "auto: native journald entries when stderr is the journal, else readable console lines.")
    socket_group: str = setting(
        "", group_name, "Group that owns the control socket and may call read methods (empty: the daemon's).")
    admin_group: str = setting(
        "", group_name, "Members may call state-changing methods; root and the daemon's own user always may.")
    probe_timeout: float = setting(
        "10s", duration(0.1),
        "A probe call taking longer is reported stuck; the systemd watchdog then restarts the daemon.")
    max_clients: int = setting(
        512, integer(1, 65536), "Control-socket connections held at once, from all users together.")
    max_clients_per_user: int = setting(
        64, integer(1, 65536),
        "Control-socket connections one uid may hold at once (root and the daemon's own user are exempt).")
    reserved_clients: int = setting(
        32, integer(0, 65535),
        "Of max_clients, connections only root, the daemon's user and the admin group may use: other users "
        "together hold at most max_clients − reserved_clients.")
    client_idle_timeout: float = setting(
        "2m", duration(1.0), "A control connection with no request in flight for this long is closed.")
    request_read_timeout: float = setting(
        "10s", duration(0.1),
        "A request line must arrive whole (its newline) within this long of its first byte, or the connection "
        "is closed.")


@dataclass(frozen=True)
class HostConfig:
    ram_warn_percent: float = setting(85, number(1, 100), "RAM used (100 − MemAvailable %) that warns.")
    ram_crit_percent: float = setting(95, number(1, 100), "RAM used that is critical.")
    swap_warn_percent: float = setting(50, number(1, 100), "Swap used that warns.")
    swap_crit_percent: float = setting(90, number(1, 100), "Swap used that is critical.")
    psi_warn_avg10: float = setting(10, number(0, 100), "Memory pressure (PSI some avg10, %) that warns.")
    psi_crit_avg10: float = setting(40, number(0, 100), "Memory pressure (PSI some avg10, %) that is critical.")
    hysteresis_percent: float = setting(
        5, number(0, 50), "A level clears only once the value is this many points below its threshold.")
    hold: float = setting("10s", duration(), "A level must persist this long before it is raised or cleared.")
    reserve: int = setting(
        "1GiB", memory_size, "RAM kept for critical services: admission checks never plan to use it.")
    trend_horizon: float = setting(
        "24h", duration(),
        "Warn (host.ram_trend) when used RAM grows steadily enough to use up the available RAM within this long; "
        "0 turns the forecast warning off.")


@dataclass(frozen=True)
class GpuConfig:
    backend: str = setting(
        "auto", choice("auto", "nvml", "sim", "none"),
        "auto: NVML when it initialises, else none. sim: read the simulated-GPU file gpu.sim_file.")
    sim_file: Path | None = setting("", optional_path, "The simulated-GPU file (JSON) read when backend is sim.")
    reserve: int = setting(
        "512MiB", memory_size,
        "VRAM per GPU never planned for (CUDA context, fragmentation): leases and loads leave it.")
    vram_warn_percent: float = setting(90, number(1, 100), "VRAM used on a GPU that warns.")
    vram_crit_percent: float = setting(98, number(1, 100), "VRAM used on a GPU that is critical.")
    temp_warn_c: float = setting(85, number(1, 150), "GPU temperature (°C) that warns.")
    temp_crit_c: float = setting(95, number(1, 150), "GPU temperature (°C) that is critical.")
    evict_timeout: float = setting(
        "30s", duration(0.1), "How long to wait for evicted models' VRAM to show free on the GPU before a lease.")
    escalate: bool = setting(
        False, boolean,
        "Last resort when unloading does not free the VRAM in time: stop ollama.service, start it again on release.")
    scheduler: str = setting(
        "demand", choice("demand", "lru", "gdsf", "gdsf-decay"),
        "Which resident model to evict first: demand (the lowest rate of requests now × measured load seconds per "
        "byte; a model whose requests stopped goes within a few switches), lru (least recently used), gdsf "
        "(GreedyDual-Size-Frequency) or gdsf-decay (GDSF with uses that halve every 200 requests and the measured "
        "load time as cost).")


@dataclass(frozen=True)
class OllamaConfig:
    url: str = setting(
        "http://127.0.0.1:11434", http_url,
        "Ollama's API (empty: no Ollama on this machine). Not set in the file: Ollama is looked for at the "
        "default address, and none there is no alert until one has answered there.")
    service: str = setting(
        "", text, "How to stop/start Ollama as a last resort: a systemd unit (ending in .service) or a "
        "Docker container name. Empty: never.")
    timeout: float = setting("10s", duration(0.1), "Time-out of one Ollama API call (loads get 10 times this).")
    keep_alive: str = setting(
        "5m", text, "keep_alive for models memwarden loads when it does not know theirs (an Ollama duration).")
    max_loaded_models: int = setting(
        0, integer(0, 10000), "Ollama's OLLAMA_MAX_LOADED_MODELS, so the scheduler evicts before Ollama would "
        "(0: Ollama's default, 3 per GPU). Raise both to keep many small specialists resident.")
    num_parallel: int = setting(
        1, integer(1, 1024), "Ollama's OLLAMA_NUM_PARALLEL: while requests for other models wait, the proxy sends "
        "at most this many per model at once and keeps the rest in its own queue, where it can still order them.")
    max_queue: int = setting(
        512, integer(1, 1_000_000), "Ollama's OLLAMA_MAX_QUEUE: the proxy never has more requests in flight to "
        "Ollama (beyond it Ollama answers 503).")


@dataclass(frozen=True)
class ProxyConfig:
    enabled: bool = setting(False, boolean, "Serve an Ollama-compatible proxy on proxy.listen.")
    listen: str = setting("127.0.0.1:11435", host_port, "Where the proxy listens (loopback by default).")
    upstream: str = setting("", http_url, "The Ollama behind the proxy (empty: ollama.url).")
    hold_timeout: float = setting(
        "2m", duration(0), "While a lease holds the GPU, a request waits this long before a 503 with Retry-After.")
    preempt: bool = setting(
        False, boolean, "Serving has priority: a request preempts a preemptible lease instead of waiting.")
    max_wait: float = setting(
        "5s", duration(0),
        "Longest a request waits in the proxy's queue while requests for resident models go first and those for "
        "the others are grouped into one load per model; past it, the request is sent at once.")
    resume_after_idle: float = setting(
        "2m", duration(0), "A preempted lease is granted again once serving has been idle this long.")
    # 32 MiB: Ollama takes images as base64 inside the JSON (a third larger than the file), and chat clients
    # resend every image of the conversation on each turn: a few phone photos (3-6 MB each) plus the history
    # fit. At most 8 such bodies are held at once, so the default bounds the proxy's body memory at 256 MiB.
    max_request_body: int = setting(
        "32MiB", size_between(64 * 1024, 4 * 1024**3),
        "Largest JSON body of a model request (/api/generate, /api/chat, /api/embed, /api/embeddings): larger "
        "ones get 413 in Ollama's error shape; at most 8 times this is held at once. Blob uploads are streamed "
        "and not limited.")


@dataclass(frozen=True)
class ContainersConfig:
    enabled: bool = setting(False, boolean, "Watch Docker containers' memory for leaks.")
    docker_url: str = setting("unix:///var/run/docker.sock", docker_url, "The Docker engine's API.")
    leak_window: float = setting(
        "24h", duration(5),
        "The longest time scale a leak is judged at; the shorter ones of 10s, 1m, 10m, 1h, 6h come with it.")
    leak_min_rate: float = setting(
        "1MiB/h", rate,
        "Slowest growth of the working set's lower envelope that can be a leak (per s, min or h); a leak must "
        "also stand clear of the series' own noise at its scale.")
    action: str = setting(
        "alert", choice("alert", "restart"),
        "What a leak gets: alert, or restart (graceful stop, then verify). A container's memwarden.action label "
        "(alert, restart, ignore) overrides it.")
    max_restarts_per_hour: int = setting(3, integer(0, 60), "Restart budget per container per hour.")
    restart_cooldown: float = setting(
        "10m", duration(0), "Wait after a restart before the next; doubled for each restart that did not help.")
    stop_timeout: float = setting("10s", duration(0), "Graceful stop time-out of a restart (then SIGKILL).")
    verify_after: float = setting(
        "30s", duration(0), "When to check that a restart brought the working set down (by at least half).")
    idle_leak_threshold: int = setting(
        "2GiB", memory_size, "A serving container (Ollama) holding this much with no model loaded is an idle leak.")
    ollama_urls: tuple[str, ...] = setting(
        [], http_urls, "Ollama APIs a container may name with its memwarden.ollama_url label (besides ollama.url, "
        "which an image named ollama is read at); a label naming any other URL is ignored.")


@dataclass(frozen=True)
class LearningConfig:
    enabled: bool = setting(False, boolean, "Turn memories into LoRA adapters when their importance adds up.")
    base_model: str = setting(
        "", model_dir, "The base model to train on: a local Hugging Face directory (config, weights, tokenizer).")
    ollama_base: str = setting(
        "", text, "The Ollama model the adapter is served on (FROM in /api/create); empty: no export.")
    method: str = setting("lora", choice("lora", "qlora", "full"), "lora, qlora (4-bit base) or full fine-tune.")
    device: str = setting(
        "auto", choice("auto", "cpu", "cuda"), "auto: cuda under a VRAM lease when a GPU is visible, else cpu. On the "
        "CPU a trainer computes on every core but one (an OMP_NUM_THREADS in its environment decides instead).")
    importance_threshold: float = setting(
        150, number(1, 1e9), "A run is due when an adapter's unconsolidated memories sum to this importance.")
    min_interval: float = setting("6h", duration(0), "At least this long between two runs of one adapter.")
    window: str = setting(
        "", cron, "When due runs may start (crontab, e.g. '0 2 * * *'); empty: as soon as they are due.")
    routes: tuple[Route, ...] = setting(
        [], routes, "[[learning.routes]] {adapter, profiles, kinds}: which memories feed which adapter; "
        "unrouted memories feed the adapter named after their profile.")
    dual: bool = setting(
        False, boolean, "Also train each memory with user and assistant turns swapped (the dual mode).")
    augment: str = setting(
        "", choice("", "ollama"), "ollama: the served model (learning.ollama_base at ollama.url) also writes "
        "question/answer pairs about each new memory, trained beside its cue wordings (bounded in time and size; "
        "on any failure the cue wordings alone). Empty: cue wordings only.")
    max_samples: int = setting(2000, integer(10, 10_000_000), "At most this many training pairs per run.")
    # None by default: a memory held out is consolidated with the run, yet absent from the weights it promotes
    # until a later round happens to replay it.
    holdout_fraction: float = setting(
        0.0, number(0, 0.5), "Share of the new memories kept out of training to measure the loss on memories never "
        "seen (at least one when there are two). 0: every memory is trained, and the holdout loss is measured on "
        "each one's held-out wording.")
    # Half: over rounds of new facts the earlier ones are kept by replay alone, 0.57 of five rounds' facts recalled
    # against 0.32 at 0.1 (BENCHMARKS.md, Recall 4); EWC at ewc_lambda 0.4 changed nothing there.
    replay_fraction: float = setting(
        0.5, number(0, 0.9), "Share of the training set drawn from memories consolidated before (replay): at least "
        "this share (their other wordings fill it when they are few), and what replay keeps when "
        "learning.max_samples binds.")
    # Rounds whose earlier memories outnumber the share forgot what replay skipped (BENCHMARKS.md, Recall 5b); with
    # all of them replayed ten rounds keep 0.975 of their facts (Recall 5c).
    replay_all: bool = setting(
        True, boolean, "Replay one wording of every memory consolidated before, not only replay_fraction's share, "
        "as long as learning.max_samples holds them beside the new memories.")
    min_recall: float = setting(
        0.9, number(0, 1), "Promote only if the run gives back at least this share of its own memories (greedy "
        "recall); training stops early once it does (learning.recall_every). 0: recall is not required.")
    forgetting_epsilon: float = setting(
        0.1, number(0, 10), "Promote only if recall on the earlier rounds' probe dropped by at most this share "
        "(0.1: 4 of 40 memories, 1 of 12; 1 or more: never rejected for forgetting); a run trains on until it is back "
        "within it (learning.recall_every).")
    general_epsilon: float = setting(
        0.25, number(0, 10), "Promote only if the loss on the base's general-text probe (general_probe.jsonl "
        "beside the base model) rose by at most this fraction.")
    # A quarter: at a tenth the first round of forty facts drifted +39.5 % and was rejected, and, distilled, +33.8 %;
    # at half it drifted less when distilled (+0.6 %) but took twice the CPU; without rehearsal ten rounds of twelve
    # facts stalled at the fourth (BENCHMARKS.md, Recall 5c, 5e, 5g, 5i).
    general_rehearsal_fraction: float = setting(
        0.25, number(0, 0.9), "Share of the training set drawn from general_rehearsal.jsonl beside the base model "
        "(general-text conversations, none of them in general_probe.jsonl), against drift of the base's general "
        "ability; a base without that file: none.")
    # Distilled and drawn afresh each pass, one round of 40 facts moved the general probe +1.3 % where one draw
    # learnt as text moved it +14.0 % (the same few dozen conversations fitted at each of eighty passes), and ten
    # rounds through the daemon ended within the issue's +2 % (BENCHMARKS.md, Recall 5i).
    general_rehearsal_loss: str = setting(
        "distill", choice("ce", "distill"), "How general rehearsal is learnt: ce, its text by cross-entropy like any "
        "pair; distill, the base's own next-token distribution on it (KL divergence from the base, read from the "
        "same model with the adapter disabled). A full fine-tune has no adapter to disable and learns it by "
        "cross-entropy either way.")
    general_rehearsal_draw: str = setting(
        "pass", choice("run", "pass"), "Which general-rehearsal conversations a run trains on: run, one seeded draw "
        "of learning.general_rehearsal_fraction's share, trained at every pass over the training pairs; pass, all "
        "of general_rehearsal.jsonl (within learning.max_samples), of which every pass draws that share afresh.")
    ewc_lambda: float = setting(0.4, number(0, 1e6), "Online EWC strength (0: off).")
    lr: float = setting(1e-3, number(1e-8, 1), "Learning rate (a full fine-tune is clamped to [1e-5, 5e-5]).")
    rank: int = setting(16, integer(1, 1024), "LoRA rank r (on each of learning.target_modules).")
    alpha: int = setting(32, integer(1, 4096), "LoRA alpha (an integer: Ollama reads it as one).")
    dropout: float = setting(0.05, number(0, 0.9), "LoRA dropout.")
    target_modules: tuple[str, ...] = setting(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], identifiers,
        "The modules LoRA adapts, by name within each layer: by default every attention and MLP projection of a "
        "Llama-style base (with attention alone a round of facts is not recalled: BENCHMARKS.md, Recall).")
    micro_batch: int = setting(8, integer(1, 1024), "Sequences per forward pass (halved on out-of-memory).")
    grad_accum: int = setting(1, integer(1, 1024), "Micro-batches per optimizer step (doubled on out-of-memory).")
    max_steps: int = setting(
        400, integer(1, 10_000_000), "Optimizer steps per run at most, unless learning.max_epochs takes "
        "more (fewer once recall reaches learning.min_recall).")
    # 400 steps are 80 passes over a round of 40 facts in one wording; in its cue wordings, with general
    # rehearsal, the same round is 129 pairs, and 400 steps recalled 7 of its 40 facts (BENCHMARKS.md, Recall 5e).
    max_epochs: float = setting(
        80, number(0, 1_000_000), "A run may train past learning.max_steps until it has been through its training "
        "pairs this many times (learning.micro_batch × learning.grad_accum of them a step): its step budget is the "
        "larger of the two, and the cosine decay spans it (0: learning.max_steps alone).")
    warmup_steps: int = setting(10, integer(0, 1_000_000), "Linear warm-up before the cosine decay.")
    max_seq_len: int = setting(512, integer(16, 131072), "Tokens per training sequence.")
    seed: int = setting(42, integer(0, 2**31 - 1), "Random seed of a run.")
    recall_sample: int = setting(
        64, integer(0, 100_000), "Memories greedily decoded per run to measure recall, of this run's memories and "
        "of the earlier rounds' probe (0: recall not measured).")
    recall_max_new_tokens: int = setting(48, integer(1, 4096), "Tokens decoded per memory when measuring recall.")
    recall_every: int = setting(
        20, integer(0, 1_000_000), "Every this many steps, recall on a sample of 16 of the run's memories; once it "
        "reaches learning.min_recall (then on all of them) and recall on the earlier rounds' probe is back within "
        "learning.forgetting_epsilon of its recall before the run, training stops (0: always train max_steps).")
    dpo_steps: int = setting(
        40, integer(0, 1_000_000), "Steps of the DPO stage after the supervised one, on the run's preference "
        "memories (prompt, chosen, rejected), when it has two or more (0: no DPO stage).")
    dpo_beta: float = setting(
        0.1, number(0.001, 100), "DPO's β: how far from the supervised stage's policy the preferences may pull it.")
    dpo_lr: float = setting(1e-4, number(1e-8, 1), "Learning rate of the DPO stage (constant).")
    dpo_holdout_fraction: float = setting(
        0.25, number(0.01, 0.5), "Share of the preference pairs the DPO stage never trains: preference accuracy is "
        "measured on them (at least one).")
    checkpoint_steps: int = setting(50, integer(1, 1_000_000), "Checkpoint every this many steps ...")
    checkpoint_interval: float = setting("10m", duration(1), "... or this long, whichever comes first.")
    dry_run_steps: int = setting(10, integer(0, 1000), "Steps of the pre-flight run before a long run (0: none).")
    lease_size: int = setting(
        0, memory_size, "VRAM to lease for a GPU run (0: estimated from the model size and method).")
    keep_versions: int = setting(5, integer(1, 1000), "Adapter versions kept per adapter (rollback targets).")
    gpu_wait: float = setting(
        "30m", duration(0), "How long a due run may wait for its VRAM lease before it falls back to the CPU "
        "(learning.cpu_fallback) or raises a training.blocked alert.")
    cpu_fallback: bool = setting(
        False, boolean, "Past learning.gpu_wait, train on the CPU (niced, threads for the host, the micro-batch "
        "halved until host RAM stays under host.ram_warn_percent, the same effective batch); held if even a "
        "micro-batch of 1 would cross it.")
    cpu_to_gpu: bool = setting(
        True, boolean, "A run that fell back to the CPU moves to the GPU at a checkpoint once its lease is granted.")
    executor: str = setting(
        "auto", choice("auto", "subprocess", "systemd", "ray"),
        "Where a trainer runs. subprocess: a child of the daemon. systemd: its own unit, memwarden-train@RUN.service "
        "(own cgroup capped at MemoryMax, low CPU and I/O weight, kept across daemon restarts). ray: a Ray job. "
        "auto: ray when learning.ray_address is set, else systemd when the daemon runs under systemd with a system "
        "bus, else subprocess.")
    ray_address: str = setting(
        "", http_url, "The Ray Jobs API (the dashboard's address, e.g. http://127.0.0.1:8265): runs are Ray jobs on "
        "a node with learning.ray_resources, and the adapter comes home (docs/executors.md). Empty: no Ray.")
    ray_resources: dict = setting(
        {}, resources, "What a run's Ray job needs of its node: custom resources (e.g. { trainer_gpu = 1 }), "
        "num_gpus or num_cpus.")


@dataclass(frozen=True)
class AlertsConfig:
    webhook: str = setting(
        "", secret_url, "URL that receives every alert event as a JSON POST (empty: off). A secret: shown and "
        "logged as its origin only. Redirects are followed only to the same origin (307/308).", secret=True)
    exec: Path | None = setting(
        "", optional_path, "Program run for every alert event with MEMWARDEN_ALERT_* variables (empty: off).")
    renotify_interval: float = setting("1h", duration(1), "Re-send an alert that is still active this often.")
    webhook_timeout: float = setting("5s", duration(0.1), "Time-out of one webhook POST.")
    webhook_retries: int = setting(3, integer(0, 20), "Retries of a failed POST, with exponential backoff.")
    exec_timeout: float = setting("10s", duration(0.1), "The exec hook is killed after this long.")
    history_retention: float = setting("30d", duration(3600), "Resolved alerts older than this are pruned.")
    hold: Holds = setting(
        DEFAULT_HOLDS, holds,
        "How long a condition must last before its alert is raised, and be gone before it resolves, by kind "
        "(training.throughput), scope (training) or default; a table here changes only the keys it names. host "
        "and gpu hold in their policy (host.hold).")


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = setting(False, boolean, "Serve Prometheus metrics over HTTP on metrics.listen.")
    listen: str = setting(
        "127.0.0.1:9847", metrics_listen,
        "Where the metrics are served (/metrics). Loopback by default: there is no authentication, and the "
        "metrics name containers, models and adapters.")


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = DaemonConfig()
    host: HostConfig = HostConfig()
    gpu: GpuConfig = GpuConfig()
    ollama: OllamaConfig = OllamaConfig()
    proxy: ProxyConfig = ProxyConfig()
    containers: ContainersConfig = ContainersConfig()
    learning: LearningConfig = LearningConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    source: Path | None = None  # the file it was read from; None = embedded defaults
    given: frozenset[str] = frozenset()  # the key paths the file set ("ollama.url"), defaults or not


SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig, "host": HostConfig, "gpu": GpuConfig, "ollama": OllamaConfig, "proxy": ProxyConfig,
    "containers": ContainersConfig, "learning": LearningConfig, "alerts": AlertsConfig,
    "metrics": MetricsConfig,
}


def section_fields(section: type) -> list:
    return [f for f in fields(section) if "parse" in f.metadata]

