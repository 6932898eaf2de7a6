"""The tour's first steps: the simulated host, a training lease, the proxy holding a request, a leaking container.

Each step runs real commands, prints them, and checks the outcome from the records of the parts themselves
(the daemon's RPC results, the simulator's /_sim/state), never from a table's layout.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from typing import Any

from memwarden.units import format_size

from .console import Console, StepFailed, http, shown_path, wait_for
from .stack import GPUS, LEAK_WINDOW_S, LINGER_S, RESERVE, SERVING, Docker, Stack

PROMPT = "Why is the sky blue?"


def sim_state(stack: Stack) -> dict[str, Any]:
    assert stack.ollama is not None
    status, body = http("GET", f"{stack.ollama.url}/_sim/state", timeout=10)
    if status != 200:
        raise StepFailed(f"the Ollama simulator's state: HTTP {status}")
    return body


def resident(stack: Stack) -> dict[str, int]:
    """Model → GPU, as the simulator placed its runners."""
    return {r["name"]: r["gpu"] for r in sim_state(stack)["loaded"] if r["state"] == "loaded"}


def start(c: Console, stack: Stack) -> None:
    c.begin("start", "0. A simulated host: two 12 GiB GPUs, Ollama holding 6 GiB on each, memwardend watching")
    stack.start_background()
    sim = stack.ollama_sim()
    c.note(f"sim-GPU file {shown_path(stack.sim_file)}: {len(GPUS)} GPUs of {format_size(GPUS[0])}")
    c.command(["python", *_without_defaults(sim.argv[1:])])
    sim.start()
    c.ok(f"Ollama simulator at {sim.url}, pid {sim.pid}")
    placed = wait_for(lambda: len(r := resident(stack)) == len(SERVING) and r, 20, "the serving models resident")
    if sorted(placed.values()) != list(range(len(GPUS))):
        raise StepFailed(f"expected one serving model per GPU, the simulator placed {placed}")
    c.ok("resident: " + ", ".join(f"{name} on GPU {gpu}" for name, gpu in sorted(placed.items(), key=lambda x: x[1])))
    c.note(f"the tiny offline base model to learn on: {shown_path(stack.base_model)} (--base)" if stack.base_given
           else "building the tiny offline base model to learn on (memwardenctl model init-demo DIR)")
    stack.wait_base_model()
    stack.wait_docker()
    stack.write_config()
    c.note(f"config {shown_path(stack.config)}: gpu.backend = \"sim\", gpu.reserve = \"{RESERVE}\", proxy on "
           f"{stack.proxy_url}, learning on {shown_path(stack.base_model)}, containers "
           + ("on a private dockerd" if stack.docker_reason is None else "off"))
    argv = stack.start_daemon()
    c.command([shown_path(argv[0]), *argv[1:2], shown_path(argv[2])])
    assert stack.daemon is not None
    c.ok(f"memwardend answers on {shown_path(stack.socket)} (pid {stack.daemon.pid}; log "
         f"{shown_path(stack.daemon_log)})")
    listening = stack.listeners()
    public = [f"{name} {ip}:{port}" for name, ip, port in listening if ip not in ("127.0.0.1", "::1")]
    if public:
        raise StepFailed(f"a demo server listens beyond loopback: {', '.join(public)}")
    c.ok("every server listens on loopback only: " + ", ".join(f"{ip}:{port}" for _, ip, port in listening))
    c.end()


def lease(c: Console, stack: Stack) -> None:
    c.begin("lease", "1. A 4 GiB training lease: a GPU chosen, a model evicted, VRAM confirmed free, then restored")
    c.run_ctl("gpu")
    inner = c.ctl_argv("gpu")
    c.note("the leased command here shows the GPUs as the job sees them; a training job would go in its place")
    c.run_ctl("lease", "4GiB", "--holder", "demo-train", "--", *inner, timeout=120)
    record = next((x for x in c.ctl_json("lease", "list")["recent"] if x["holder"] == "demo-train"), None)
    if record is None:
        raise StepFailed("lease list has no lease held by demo-train")
    evicted = [e["name"] for e in record["evicted"]]
    if not evicted:
        raise StepFailed(f"the 4 GiB lease on GPU {record['gpu']} evicted nothing: {RESERVE} reserve not honoured?")
    c.ok(f"granted on GPU {record['gpu']}, evicting {', '.join(evicted)}")
    # Ollama answers an unload at once while its runner keeps the VRAM LINGER_S more: the daemon's own record
    # says how long it waited for the memory to show free on the GPU before granting.
    confirmed = wait_for(lambda: next((e for e in stack.log_events() if e.get("event") == "evicted VRAM confirmed free"
                                       and e.get("lease") == record["id"]), None), 10, "the confirmation in the log")
    if confirmed["waited_s"] < LINGER_S * 0.9:
        raise StepFailed(f"the lease was granted {confirmed['waited_s']:.2f} s after the unload, before the "
                         f"runner's {LINGER_S:g} s of lingering VRAM were over")
    c.ok(f"VRAM confirmed free before the grant: Ollama answered the unload at once, memwardend then waited "
         f"{confirmed['waited_s']:.1f} s for the runner's memory to show free on GPU {record['gpu']}")
    restored = record.get("restored") or []
    if not restored or not all(r["ok"] for r in restored):
        raise StepFailed(f"the evicted models were not all restored: {restored}")
    back = wait_for(lambda: all(m in resident(stack) for m in evicted) and resident(stack), 20,
                    "the evicted model back in the simulator")
    c.ok(f"restored on release: {', '.join(f'{m} on GPU {back[m]}' for m in evicted)}; serving downtime "
         f"{record['downtime_s']:.1f} s")
    c.run_ctl("lease", "list")
    c.end()


def proxy(c: Console, stack: Stack) -> None:
    c.begin("proxy", "2. A request through the proxy, held while a lease holds its model's room, answered after")
    keep = [m.name for m in SERVING[1:]]
    for name in keep:  # so the proxy cannot make room by evicting the other GPU's model: it has to wait
        c.run_ctl("models", "pin", name)
    leased = c.ctl_argv("lease", "4GiB", "--holder", "demo-batch", "--", "sleep", "4")
    c.say(f"  $ {shlex.join(leased)} &")
    job = subprocess.Popen(leased, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        active = wait_for(lambda: next((x for x in c.ctl_json("lease", "list")["active"]
                                        if x["holder"] == "demo-batch"), None), 60, "the demo-batch lease")
        model = active["evicted"][0]["name"] if active.get("evicted") else SERVING[0].name
        body = {"model": model, "prompt": PROMPT, "stream": False}
        c.command(["curl", "-s", f"{stack.proxy_url}/api/generate", "-d", _json(body)])
        t0 = time.time()
        status, answer = http("POST", f"{stack.proxy_url}/api/generate", body, timeout=150)
        t1 = time.time()
        c.output(_json(answer)[:300] if isinstance(answer, dict) else str(answer)[:300])
        out, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.terminate()
            job.wait(10)
    c.output(out)
    if job.returncode != 0:
        raise StepFailed(f"`{shlex.join(leased)}` exited {job.returncode}")
    if status != 200 or not isinstance(answer, dict) or not answer.get("done") or not answer.get("response"):
        raise StepFailed(f"the proxied request got HTTP {status}: {str(answer)[:200]}")
    record = next(x for x in c.ctl_json("lease", "list")["recent"] if x["id"] == active["id"])
    if record["released_at"] is None or t1 < record["released_at"]:
        raise StepFailed("the proxied request was answered before the lease ended")
    c.ok(f"held {record['released_at'] - t0:.1f} s while lease {record['id']} held GPU {record['gpu']}, answered "
         f"{t1 - record['released_at']:.1f} s after it ended (HTTP 200, {len(answer['response'])} characters)")
    for name in keep:
        c.run_ctl("models", "unpin", name, show=False)
    c.end()


def containers(c: Console, stack: Stack) -> None:
    c.begin("containers", "3. A leaking container detected and restarted")
    if stack.docker_reason is not None:
        c.say(f"  skipped: {stack.docker_reason}")
        c.end("skipped")
        return
    assert stack.docker is not None
    name = Docker.CONTAINER
    c.note(f"{name} has been writing 2 MB/s into its /dev/shm since the start, on a private dockerd "
           f"({stack.docker.engine.url}), label memwarden.action=restart")

    def restarted() -> dict[str, Any] | None:
        rows = [r for r in c.ctl_json("containers", "history") if r["container"] == name]
        return rows[0] if rows and rows[0]["effective"] is not None else None

    row = wait_for(restarted, 3 * LEAK_WINDOW_S + 30, f"{name}'s restart, verified", interval=0.5)
    c.run_ctl("containers")
    c.run_ctl("containers", "history")
    if row["reason"] != "leak" or row["effective"] != 1:
        raise StepFailed(f"{name}'s restart: reason {row['reason']!r}, effective {row['effective']!r}")
    c.ok(f"leak detected and {name} restarted: working set {format_size(row['working_set_before'])} → "
         f"{format_size(row['working_set_after'])}, verified")
    alerts = [a for a in c.ctl_json("alerts")["recent"] if a["kind"] == "container.leak" and a["key"] == name]
    if not alerts:
        raise StepFailed(f"no container.leak alert for {name}")
    c.ok(f"alert container.leak raised for {name}" + (" and resolved" if alerts[-1]["resolved_at"] else ""))
    c.end()


SIM_DEFAULTS = {"--gpu": "all", "--max-loaded": "0", "--max-queue": "512", "--num-parallel": "1",
                "--chunk-delay": "0.001", "--load-seconds": "0.05"}


def _without_defaults(argv: list[str]) -> list[str]:
    """The simulator's command line as a user would type it: the options left at their default dropped."""
    out, i = [], 0
    while i < len(argv):
        if SIM_DEFAULTS.get(argv[i]) == (argv[i + 1] if i + 1 < len(argv) else None):
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"))
