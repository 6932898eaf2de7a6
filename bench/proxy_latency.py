"""Latency the memwarden Ollama proxy adds to /api/generate, against the same Ollama double reached directly.

One warm model (loaded first, keep_alive forever, chunk_delay 0) in the Ollama double (OLLAMA_NUM_PARALLEL 8,
and ollama.num_parallel 8 in memwardend, so that concurrent clients measure the hop, not a queue); memwardend with
proxy.enabled in front of it on a free loopback port. Measured with persistent http.client connections and the
same client code for all, sequentially (one client) and with --clients concurrent clients (threads, one
connection each, started together at each block):
  non-streamed  POST /api/generate {"stream": false}: the whole round trip;
  streamed      POST /api/generate {"stream": true}: time to the first NDJSON line (the rest is read untimed).
Targets, in the same run, taking turns in blocks so drift hits them alike:
  direct        the double itself (the baseline every ratio is taken against);
  memwarden     memwardend's proxy (the coalescing queue, admission's hit path, then a pooled raw forward);
  aiohttp fwd   a bare aiohttp pass-through proxy (same interpreter, no admission): what the extra hop alone costs;
  relay         a bare asyncio-streams relay (same interpreter, no checks, heads passed on unchanged): the floor
                of the design memwarden's proxy was first built on;
  protocol relay  the same on asyncio Protocols (callbacks, no StreamReader, no task per request): the floor of
                the design memwarden's proxy is built on now;
  proxy alone   memwarden's proxy code in a process of its own, every model resident: the hop without the daemon;
  (each with the CPU time its server process spent per timed request, read from /proc: a figure the machine's
  load disturbs far less than latency; memwardend's includes its 1 s sample passes)
  BASTION       bastion-broker 0.6.0 (FastAPI) in front of the same double, from a separate venv (--bastion), with
                its defaults plus what it needs without nvidia-smi; and once more with
                scheduler.concurrent_dispatch_delay_seconds = 0. Reported as unavailable when its executable is
                missing or it does not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from _arbitration import GiB, World, arbitration_world, free_port, http_ready, wait_until
from _common import (
    cpu_pressure,
    emit,
    exit_cleanly_on_sigterm,
    fmt,
    fmt_ratio,
    kill_process,
    parser,
    percentile,
    ratio,
    table,
)
from _forwarders import FORWARDER, PROTOCOL_RELAY, PROXY_ALONE, STREAMS_RELAY

MODEL = "m:1b"
MODELS = [{"name": MODEL, "size": 2 * GiB, "family": "llama", "parameter_size": "1.2B", "context_length": 4096}]
PROMPT = "Why is the sky blue?"
HEADERS = {"Content-Type": "application/json"}
DEFAULT_BASTION = os.environ.get("BASTION_BIN", "/tmp/bastion-venv/bin/bastion")

# Its default 0.1 s pause between two dispatches of one scheduler tick is what a request waits at its defaults
# (found by trial: loop_interval_seconds and cooldown_seconds at 0 change nothing, this alone removes it).
BASTION_TUNED = {"concurrent_dispatch_delay_seconds": 0.0}


def bastion_config(path: Path, double_port: int, port: int, tuned: bool) -> None:
    lines = ["ollama:", '  host: "127.0.0.1"', f"  port: {double_port}",
             "server:", '  host: "127.0.0.1"', f"  port: {port}",
             # No nvidia-smi here: the VRAM total (and power limit) must be given, else it assumes 8 GB.
             "gpu:", "  total_vram_gb: 24", "  max_power_watts: 300",
             "models:", f'  "{MODEL}":', "    vram_gb: 2.0", "    default_num_ctx: 4096"]
    if tuned:
        lines.append("scheduler:")
        lines.extend(f"  {k}: {v}" for k, v in BASTION_TUNED.items())
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def bastion(binary: str, double_port: int, tuned: bool, stack: contextlib.ExitStack) -> Any:
    """Start BASTION in front of the double; yields its port, or a string saying why it is unavailable."""
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        yield f"no executable at {binary} (install bastion-broker==0.6.0 into a throwaway venv; see BENCHMARKS.md)"
        return
    home = Path(tempfile.mkdtemp(prefix="mwbench-bastion", dir="/tmp"))
    stack.callback(shutil.rmtree, home, ignore_errors=True)
    port = free_port()
    bastion_config(home / "broker.yaml", double_port, port, tuned)
    # Every file it writes (audit log, VRAM journal, token) goes under the temp dir, never under ~.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "OLLAMA_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
               BASTION_CONFIG_DIR=str(home / "config"), BASTION_DATA_DIR=str(home / "data"))
    log = (home / "bastion.log").open("wb")
    stack.callback(log.close)
    proc = subprocess.Popen([binary, "--config", str(home / "broker.yaml"), "--log-level", "WARNING"],
                            cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(kill_process, proc, 15.0)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: proc.poll() is not None or http_ready(port), 30, "BASTION to answer")
    if proc.poll() is not None or not http_ready(port):
        tail = (home / "bastion.log").read_text(errors="replace").strip().splitlines()[-3:]
        yield f"BASTION did not start (exit {proc.poll()}): {' / '.join(tail)[:300]}"
        return
    yield port


def hop_world(stack: contextlib.ExitStack, chunk_delay: float = 0.0) -> World:
    """The double serving MODEL with eight slots and a memwardend proxying it (ollama.num_parallel 8 too), so that
    concurrent clients measure the hop, not a queue; closed with `stack`. `chunk_delay`: the double's pause before
    each streamed line after the first (0: the lines back to back)."""
    double_kw = {"unload_linger": 0.05, "load_seconds": 0.01, "chunk_delay": chunk_delay, "keep_alive": "1h",
                 "num_parallel": 8}
    world = stack.enter_context(arbitration_world(MODELS, [MODEL], total_bytes=24 * GiB, double_kw=double_kw,
                                                  proxy=True, ollama={"num_parallel": 8}))
    assert world.proxy_port is not None
    return world


def start_forwarder(name: str, source: str, upstream: str, stack: contextlib.ExitStack, pids: dict[str, int]) -> int:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", source, str(port), upstream], stdin=subprocess.DEVNULL)
    stack.callback(kill_process, proc)
    wait_until(lambda: proc.poll() is not None or http_ready(port), 20, LABELS[name])
    if proc.poll() is not None:
        raise RuntimeError(f"{LABELS[name]} exited with {proc.returncode}")
    pids[name] = proc.pid
    return port


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 when unknown)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_request(conn: HTTPConnection, body: bytes, stream: bool) -> float:
    """µs to the whole answer (stream=False) or to the first NDJSON line (stream=True)."""
    t0 = time.perf_counter_ns()
    conn.request("POST", "/api/generate", body=body, headers=HEADERS)
    resp = conn.getresponse()
    if stream:
        first = resp.readline()
        t1 = time.perf_counter_ns()
        resp.read()  # drain untimed, so the connection can carry the next request
        if resp.status != 200 or not first.strip():
            raise RuntimeError(f"streamed /api/generate: HTTP {resp.status}: {first[:200]!r}")
    else:
        data = resp.read()
        t1 = time.perf_counter_ns()
        if resp.status != 200:
            raise RuntimeError(f"/api/generate: HTTP {resp.status}: {data[:200]!r}")
    return (t1 - t0) / 1000


def measure(targets: dict[str, int], counts: dict[str, int], warmup: dict[str, int], stream: bool,
            blocks: int, clients: int = 1, pids: dict[str, int] | None = None,
            cpu: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Samples per target; `cpu` gets each target's server CPU seconds over its timed requests (by `pids`)."""
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "stream": stream}).encode()
    conns = {name: [HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(clients)]
             for name, port in targets.items()}
    samples: dict[str, list[float]] = {name: [] for name in targets}

    def run(conn: HTTPConnection, n: int, out: list[float], start: threading.Barrier | None) -> None:
        if start is not None:
            start.wait()
        for _ in range(n):
            out.append(one_request(conn, body, stream))

    def together(name: str, n: int, out: list[float]) -> None:
        if clients == 1:
            run(conns[name][0], n, out, None)
            return
        start = threading.Barrier(clients)
        outs: list[list[float]] = [[] for _ in range(clients)]
        threads = [threading.Thread(target=run, args=(c, max(1, n // clients), o, start))
                   for c, o in zip(conns[name], outs, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for o in outs:
            out.extend(o)

    try:
        for name in conns:
            together(name, warmup[name] * clients, [])
        for b in range(blocks):
            for name in conns:
                per = counts[name] // blocks
                n = per if b < blocks - 1 else counts[name] - per * (blocks - 1)
                c0 = cpu_seconds((pids or {}).get(name))
                together(name, n, samples[name])
                if cpu is not None:
                    cpu[name] = cpu.get(name, 0.0) + cpu_seconds((pids or {}).get(name)) - c0
    finally:
        for group in conns.values():
            for conn in group:
                conn.close()
    return samples


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_us": round(percentile(values, 50), 1), "p99_us": round(percentile(values, 99), 1),
            "min_us": round(min(values), 1), "max_us": round(max(values), 1)}


LABELS = {"direct": "direct to the double (baseline)", "memwarden": "memwarden proxy",
          "forwarder": "bare aiohttp forwarder", "relay": "bare asyncio-streams relay (no checks)",
          "protocol_relay": "bare asyncio-Protocol relay (no checks)",
          "proxy_alone": "memwarden's proxy alone (no daemon, every model resident)",
          "bastion": "BASTION 0.6.0, defaults",
          "bastion_tuned": "BASTION 0.6.0, dispatch delay 0"}


def render(results: dict[str, Any], mode: str, title: str) -> str:
    rows = []
    base = results[mode]["direct"]
    for name in LABELS:
        if name not in results[mode]:
            continue
        s = results[mode][name]
        row = [LABELS[name], fmt(s["p50_us"]), fmt(s["p99_us"])]
        cpu_row = fmt(s.get("cpu_us_per_request")) if s.get("cpu_us_per_request") is not None else "—"
        if name == "direct":
            row += ["—", "—", "1.00×", "1.00×", cpu_row, s["n"]]
        else:
            row += [fmt(round(s["p50_us"] - base["p50_us"], 1)), fmt(round(s["p99_us"] - base["p99_us"], 1)),
                    fmt_ratio(ratio(s["p50_us"], base["p50_us"])), fmt_ratio(ratio(s["p99_us"], base["p99_us"])),
                    cpu_row, s["n"]]
        rows.append(row)
    return table([title, "p50 (µs)", "p99 (µs)", "added p50 (µs)", "added p99 (µs)", "ratio p50", "ratio p99",
                  "server CPU per request (µs)", "n"], rows)


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000, help="timed requests per mode for direct/memwarden/"
                                                              "forwarder (default 1000)")
    p.add_argument("--bastion-requests", type=int, default=200,
                   help="timed requests per mode for each BASTION variant (default 200: its scheduler adds tens "
                        "of ms per request)")
    p.add_argument("--warmup", type=int, default=50, help="untimed requests per target and mode (default 50)")
    p.add_argument("--blocks", type=int, default=10, help="interleaving blocks (default 10)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients in the concurrent rows (default 8)")
    p.add_argument("--chunk-delay", type=float, default=0.0, metavar="S",
                   help="the double's pause between streamed lines (default 0: back to back; Ollama writes one a "
                        "token, 5-50 ms apart on local hardware)")
    p.add_argument("--bastion", default=DEFAULT_BASTION,
                   help=f"BASTION's executable, in its own venv (default $BASTION_BIN or {DEFAULT_BASTION}); "
                        "'' to skip it")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    results: dict[str, Any] = {"requests": args.requests, "chunk_delay": args.chunk_delay,
                               "bastion_requests": args.bastion_requests,
                               "warmup": args.warmup, "blocks": args.blocks, "bastion": {}}
    with contextlib.ExitStack() as stack:
        world = hop_world(stack, args.chunk_delay)
        pids = {"direct": world.double.pid, "memwarden": world.daemon.pid}
        targets = {"direct": world.double.port, "memwarden": world.proxy_port,
                   "forwarder": start_forwarder("forwarder", FORWARDER, world.double.url, stack, pids),
                   "relay": start_forwarder("relay", STREAMS_RELAY, str(world.double.port), stack, pids),
                   "protocol_relay": start_forwarder("protocol_relay", PROTOCOL_RELAY, str(world.double.port), stack,
                                                     pids),
                   "proxy_alone": start_forwarder("proxy_alone", PROXY_ALONE, world.double.url, stack, pids)}
        for key, tuned in (("bastion", False), ("bastion_tuned", True)):
            if not args.bastion:
                results["bastion"][key] = "skipped (--bastion '')"
                continue
            got = stack.enter_context(bastion(args.bastion, world.double.port, tuned, stack))
            if isinstance(got, str):
                results["bastion"][key] = got
            else:
                targets[key] = got
                results["bastion"][key] = "measured"
        counts = {name: args.bastion_requests if name.startswith("bastion") else args.requests for name in targets}
        warmup = {name: min(args.warmup, 20) if name.startswith("bastion") else args.warmup for name in targets}
        for suffix, clients in (("", 1), ("_concurrent", args.clients)):
            for mode, stream in (("generate", False), ("ttfc", True)):
                cpu: dict[str, float] = {}
                samples = measure(targets, counts, warmup, stream, args.blocks, clients, pids, cpu)
                results[mode + suffix] = {name: {**stats(v), "cpu_us_per_request": round(1e6 * cpu[name] / len(v))
                                                 if name in cpu and name in pids else None}
                                          for name, v in samples.items()}
        state = world.double.state()
        results["double_loads"] = state["counters"].get("loads")
        results["daemon_hits"] = world.daemon.call("gpu").get("scheduler", {}).get("hits")

    c = args.clients
    sections = (("generate", "/api/generate, stream:false, round trip, 1 client"),
                ("ttfc", "/api/generate, stream:true, first NDJSON line, 1 client"),
                ("generate_concurrent", f"/api/generate, stream:false, round trip, {c} concurrent clients"),
                ("ttfc_concurrent", f"/api/generate, stream:true, first NDJSON line, {c} concurrent clients"))
    text = "\n\n".join(render(results, mode, title) for mode, title in sections)
    goals = {"generate": (250, 1000), "ttfc": (300, None), "generate_concurrent": (250, 1000),
             "ttfc_concurrent": (300, None)}
    notes = []
    for mode, (goal_p50, goal_p99) in goals.items():
        m, d = results[mode]["memwarden"], results[mode]["direct"]
        added50, added99 = round(m["p50_us"] - d["p50_us"], 1), round(m["p99_us"] - d["p99_us"], 1)
        met = added50 <= goal_p50 and (goal_p99 is None or added99 <= goal_p99)
        results[f"{mode}_added_p50_us"], results[f"{mode}_added_p99_us"] = added50, added99
        results[f"{mode}_goal_met"] = met
        goal = f"p50 ≤ {goal_p50} µs" + (f", p99 ≤ {goal_p99} µs" if goal_p99 else "")
        notes.append(f"{mode}: memwarden adds {added50:.1f} µs at p50 and {added99:.1f} µs at p99 (goal {goal}): "
                     f"{'met' if met else 'NOT met'}.")
        for floor in ("protocol_relay", "relay"):
            f50 = round(results[mode][floor]["p50_us"] - d["p50_us"], 1)
            # A ratio of two added latencies says something only when both hops added some.
            results[f"{mode}_added_p50_over_{floor}"] = over = ratio(added50, f50) if min(f50, added50) > 0 else None
            notes.append(f"  against the {LABELS[floor]}, which adds {f50:.1f} µs at p50: memwarden adds "
                         f"{added50 - f50:+.1f} µs more" + (f", {fmt_ratio(over)} the floor's." if over else "."))
    pressure = cpu_pressure()
    results["cpu_pressure_some_avg60"] = pressure
    notes.append(f"CPU pressure at the end (/proc/pressure/cpu some avg60): {pressure}.")
    for key, status in results["bastion"].items():
        if status != "measured":
            notes.append(f"{LABELS[key]}: unavailable: {status}.")
    notes.append(f"{args.requests} timed requests per mode and concurrency (BASTION: {args.bastion_requests}) after "
                 f"{args.warmup} warm-up requests (BASTION: {min(args.warmup, 20)}), targets interleaved in "
                 f"{args.blocks} blocks, one persistent http.client connection per client. "
                 f"Double: chunk_delay {args.chunk_delay:g} s, "
                 f"model {MODEL} resident throughout (loads during the run: {results['double_loads']}); "
                 f"memwardend sample_interval 1s, log_level info; scheduler hits it counted: "
                 f"{results['daemon_hits']}.")
    emit("proxy latency", text + "\n\n" + "\n".join(notes), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
