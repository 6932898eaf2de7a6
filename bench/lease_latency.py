"""Lease grant latency against the time Ollama's runner keeps its VRAM after an unload (the double's unload_linger).

A 12 GiB sim GPU, gpu.reserve 2.5 GiB and a 6 GiB model resident (keep_alive forever) in the Ollama double: a
4 GiB lease no longer fits, so memwardend must unload the model and wait until the GPU shows the bytes free and
the runner's pid gone before it grants. For each unload_linger (set on the running double) --cycles cycles of
  lease.acquire 4GiB  (timed: the grant latency)  →  lease.release  (timed: the restore, which reloads the model
  and checks it in /api/ps), with the lease's recorded downtime_s;
the confirm-free wait is read from the daemon's log ("evicted VRAM confirmed free", waited_s). Baseline, same
run: a 1 GiB lease that fits next to the model (no eviction), acquired and released the same way. One untimed
cycle first (the daemon's first /api/show of the model happens there).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Any

from _arbitration import GiB, arbitration_world, gpu_used, wait_until
from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, parser, table

BIG = "big:latest"
MODELS = [{"name": "big", "size": 6 * GiB, "family": "llama", "parameter_size": "8B"}]


def resident_in_ollama(world: Any) -> bool:
    return any(m["name"] == BIG for m in world.double.ps()) and gpu_used(world.sim_file) >= 6 * GiB


def cycle(world: Any, size: str) -> dict[str, Any]:
    d = world.daemon
    wait_until(lambda: resident_in_ollama(world), 20, f"{BIG} resident and booked")
    t0 = time.perf_counter()
    granted = d.call("lease.acquire", {"size": size, "holder": "bench", "pid": os.getpid()})
    t1 = time.perf_counter()
    free_at_grant = gpu_used(world.sim_file)
    runners_at_grant = len(world.double.runner_pids())
    t2 = time.perf_counter()
    released = d.call("lease.release", {"id": granted["id"]})
    t3 = time.perf_counter()
    restored = released.get("restored") or []
    return {"grant_s": t1 - t0, "release_s": t3 - t2, "downtime_s": released.get("downtime_s"),
            "evicted": [e["name"] for e in granted.get("evicted", [])], "used_at_grant": free_at_grant,
            "runners_at_grant": runners_at_grant, "restored_ok": all(r.get("ok") for r in restored),
            "lease": granted["id"]}


def confirm_waits(world: Any) -> dict[str, float]:
    """lease id → waited_s, from the daemon's JSON log."""
    return {e["lease"]: e["waited_s"] for e in world.daemon.log_events()
            if e.get("event") == "evicted VRAM confirmed free" and "lease" in e}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--lingers", type=float, nargs="+", default=[0.25, 0.3, 0.5, 1.0, 2.0],
                   help="unload_linger values in seconds (default 0.25 0.3 0.5 1.0 2.0; 0.3 is off the 0.25 s "
                        "poll grid)")
    p.add_argument("--cycles", type=int, default=5, help="acquire/release cycles per linger (default 5)")
    p.add_argument("--baseline-cycles", type=int, default=10, help="cycles of the no-eviction lease (default 10)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    runs: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        world = stack.enter_context(arbitration_world(
            MODELS, [BIG], total_bytes=12 * GiB, gpu={"reserve": "2.5GiB"},
            double_kw={"unload_linger": args.lingers[0], "load_seconds": 0.05}))
        cycle(world, "4GiB")  # warm-up, untimed
        runs["baseline"] = [cycle(world, "1GiB") for _ in range(args.baseline_cycles)]
        for linger in args.lingers:
            world.double.configure(unload_linger=linger)
            runs[str(linger)] = [cycle(world, "4GiB") for _ in range(args.cycles)]
        waits = confirm_waits(world)
    for samples in runs.values():
        for s in samples:
            s["confirm_wait_s"] = waits.get(s["lease"])

    summary: dict[str, Any] = {}
    rows = []
    for key, samples in runs.items():
        linger = None if key == "baseline" else float(key)
        grant = [s["grant_s"] for s in samples]
        confirm = [s["confirm_wait_s"] for s in samples if s["confirm_wait_s"] is not None]
        release = [s["release_s"] for s in samples]
        downtime = [s["downtime_s"] for s in samples if s["downtime_s"] is not None]
        evicting = all(s["evicted"] == [BIG] for s in samples)
        freed = all(s["used_at_grant"] == 0 and s["runners_at_grant"] == 0 for s in samples)
        row = {"n": len(samples), "grant_p50_s": median(grant), "grant_min_s": min(grant), "grant_max_s": max(grant),
               "confirm_wait_p50_s": median(confirm), "release_p50_s": median(release),
               "release_max_s": max(release), "downtime_p50_s": median(downtime),
               "evicted_each_time": evicting, "vram_free_and_runner_gone_at_grant": freed,
               "restored_ok": all(s["restored_ok"] for s in samples)}
        row["grant_over_linger"] = row["grant_p50_s"] / linger if linger else None
        summary[key] = row
        label = "no eviction: 1 GiB lease (baseline)" if linger is None else f"{linger:g}"
        rows.append([label, fmt(row["grant_p50_s"], 3), f"{row['grant_min_s']:.3f}–{row['grant_max_s']:.3f}",
                     fmt_ratio(row["grant_over_linger"]), fmt(row["confirm_wait_p50_s"], 3),
                     fmt(row["release_p50_s"], 3), fmt(row["downtime_p50_s"], 3),
                     "—" if linger is None else ("yes" if freed and evicting else "NO"), row["n"]])
    base = summary["baseline"]["grant_p50_s"]
    text = table(["unload_linger (s)", "grant p50 (s)", "grant min–max (s)", "grant ÷ linger",
                  "confirm-free wait p50 (s)", "release = restore p50 (s)", "downtime_s p50", "freed at grant",
                  "n"], rows)
    text += (f"\n\nGrant = the lease.acquire call (unload, wait until the GPU shows the 4 GiB free and the runner "
             f"gone, grant); the arbiter re-reads the GPU every 0.25 s while it waits (CONFIRM_POLL), so the grant "
             f"lands on the first poll after the linger ends. \"freed at grant\": the sim GPU showed 0 bytes used "
             f"and no runner alive the moment each grant returned. Release = the lease.release call, which reloads "
             f"the model (double: load_seconds 0.05) and checks it in /api/ps; downtime_s is recorded by the daemon "
             f"(evicted → restored). The no-eviction grant ({base * 1000:.1f} ms p50) is the fixed cost of a plan; "
             f"12 GiB sim GPU, gpu.reserve 2.5 GiB, {BIG} 6 GiB; daemon sample_interval 1s.")
    emit("lease latency", text, {"lingers": args.lingers, "cycles": args.cycles, "summary": summary, "runs": runs},
         args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
