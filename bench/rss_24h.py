"""memwardend's RSS over 24 simulated hours: 86,400 one-second sample passes compressed into a tight loop.

The daemon's real parts run in this process (services.build(): state database, alert dispatcher, arbiter,
container watch, learning supervisor, the RPC methods; no socket is bound), with its real sample pass
(sample_pass.py) run back to back instead of every sample_interval, and
both its clocks (monotonic and wall) advanced one second per pass, so every hold, hysteresis, leak window and
renotify interval sees a day go by. The probes are real where they can be and cheap where they cannot:
  host        a fake probe: RAM used swings across host.ram_warn_percent every 5 minutes (alerts raised, resolved)
  gpu         the real sim-GPU probe reading its JSON file, rewritten every 7 minutes (temperature across its warning)
  containers  a fake probe: --containers containers (3), one leaking and recreated (a new id) every 40 minutes,
              over a 5-minute leak window (the leak verdicts are most of a pass's cost: ~0.3 ms per container)
RSS (psutil) and, with --tracemalloc, Python's own allocations are read every --every passes. Growth is measured
from the end of the warm-up (the first simulated hour: caches, the SQLite page cache, first-time imports) to the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psutil
from _common import MIB, emit, exit_cleanly_on_sigterm, fmt, parser, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwarden.config import parse_config
from memwarden.control.methods import register_all
from memwarden.control.registry import Registry
from memwarden.probes.gpu_sim import SimGpuProbe
from memwarden.sample_pass import SamplePass
from memwarden.services import build
from memwarden.snapshots import ContainerMemory, ContainersSnapshot, HostSnapshot
from memwarden.state.db import open_state

DAY = 86_400
WARMUP = 3_600
GiB = 1 << 30
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class SwingingHost:
    """RAM used 70 % for 150 s, then 90 % for 150 s (warn 85, hold 10 s): a host.ram alert raised and resolved every
    five simulated minutes."""

    name = "host"

    def __init__(self, wall: Clock):
        self.wall = wall

    def read(self) -> HostSnapshot:
        total = 32 * GiB
        used = 0.9 if int(self.wall.t) // 150 % 2 else 0.7
        return HostSnapshot(self.wall.t, total, int(total * (1 - used)), 8 * GiB, GiB, None)


class Containers:
    """Steady containers and one that leaks 64 KiB/s, recreated (new id, memory back down) every 40 minutes."""

    name = "containers"

    def __init__(self, wall: Clock, count: int):
        self.wall = wall
        self.count = count

    def read(self) -> ContainersSnapshot:
        t = int(self.wall.t - T0)
        generation, age = divmod(t, 2400)
        boxes = [self._box(f"steady{i}", f"{i:064x}", 300 * 1024 * 1024 + (t * 7919 % 4096) * 64)
                 for i in range(self.count - 1)]
        boxes.append(self._box("leaker", f"{generation + 100:064x}", 200 * 1024 * 1024 + age * 64 * 1024))
        return ContainersSnapshot(self.wall.t, tuple(boxes), 2)

    @staticmethod
    def _box(name: str, cid: str, ws: int) -> ContainerMemory:
        return ContainerMemory(id=cid, name=name, image="app:1", working_set=ws, usage=ws, limit=4 * GiB, rss=ws,
                               restart_count=0, compose_service=name, labels=(), started_at="", source="cgroup")


def write_sim(path: Path, hot: bool) -> None:
    data = {"gpus": [{"index": 0, "name": "Sim 12G", "total_bytes": 12 * GiB, "processes": [],
                      "temperature_c": 90 if hot else 60, "utilization_percent": 50}]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


async def simulate(passes: int, every: int, trace: bool, workdir: Path, containers: int = 3) -> dict[str, Any]:
    sim = workdir / "gpu.json"
    write_sim(sim, False)
    mono, wall = Clock(10_000.0), Clock(T0)
    env = {"STATE_DIRECTORY": str(workdir / "state"), "RUNTIME_DIRECTORY": str(workdir / "run")}
    cfg = parse_config({
        "daemon": {"log_level": "error", "log_format": "console"},
        "host": {"hold": "10s"},
        "gpu": {"backend": "sim", "sim_file": str(sim)},
        "ollama": {"url": ""},
        "containers": {"enabled": containers > 0, "leak_window": "5m", "action": "alert"},
        "alerts": {"renotify_interval": "1h"},
    }, env=env, uid=os.getuid())
    from memwarden.logs import configure_logging

    configure_logging("error", "console")
    s = build(cfg, open_state(cfg.daemon.state_dir), env={}, host_probe=SwingingHost(wall),
              gpu_probe=SimGpuProbe(sim, clock=wall), container_probe=Containers(wall, containers), clock=mono,
              wall=wall, restarter=lambda cid, timeout: None)
    await s.start()
    register_all(Registry(), s, lambda trigger: asyncio.sleep(0, {}))  # the RPC methods, as a running daemon holds them
    sample_pass = SamplePass(s)
    proc = psutil.Process()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    def record() -> None:
        r = s.readings
        rows.append({"passes": r.samples, "simulated_h": round(r.samples / 3600, 2),
                     "wall_s": round(time.perf_counter() - started, 1), "rss": proc.memory_info().rss,
                     "traced": tracemalloc.get_traced_memory()[0] if trace else None,
                     "alerts_raised": sum(s.dispatcher.raised.values()),
                     "history_rows": s.db["alert_history"].count})

    if trace:
        tracemalloc.start()
    record()
    while s.readings.samples < passes:  # back to back: the clocks say one second per pass
        mono.t += 1.0
        wall.t += 1.0
        if s.readings.samples % 420 == 0:
            write_sim(sim, s.readings.samples // 420 % 2 == 1)
        await sample_pass.run()
        if s.readings.samples % every == 0 or s.readings.samples == WARMUP:
            record()
    if trace:
        tracemalloc.stop()
    await s.close()
    return {"rows": rows, "wall_s": round(time.perf_counter() - started, 1)}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--passes", type=int, default=DAY, help="sample passes, one simulated second each (86400)")
    p.add_argument("--every", type=int, default=7200, help="read RSS every this many passes (7200: 2 h)")
    p.add_argument("--containers", type=int, default=3, help="containers the fake probe reports (3; 0: off)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also trace Python allocations (about 3× slower; the RSS figure is then tracemalloc's too)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="mw-rss24h-", dir="/tmp") as tmp:
        result = asyncio.run(simulate(args.passes, args.every, args.tracemalloc, Path(tmp), args.containers))
    rows = result["rows"]
    start = rows[0]
    warm = next((r for r in rows if r["passes"] >= min(WARMUP, args.passes)), rows[-1])
    end = rows[-1]
    growth = end["rss"] - warm["rss"]
    out = [[r["passes"], fmt(r["simulated_h"], 2), fmt(r["wall_s"]), fmt(r["rss"] / MIB),
            "—" if r["traced"] is None else fmt(r["traced"] / MIB, 2), r["alerts_raised"], r["history_rows"]]
           for r in rows]
    text = table(["passes", "simulated h", "wall s", "RSS MiB", "traced MiB", "alerts raised", "history rows"], out)
    summary = table(["passes", "wall time", "RSS start", "RSS after warm-up (1 h)", "RSS end", "growth after warm-up"],
                    [[end["passes"], f"{result['wall_s']:.0f} s", f"{start['rss'] / MIB:.1f} MiB",
                      f"{warm['rss'] / MIB:.1f} MiB", f"{end['rss'] / MIB:.1f} MiB", f"{growth / MIB:+.2f} MiB"]])
    emit("RSS over 24 simulated hours", summary + "\n\n" + text,
         {"passes": end["passes"], "wall_s": result["wall_s"], "rss_start": start["rss"], "rss_warm": warm["rss"],
          "rss_end": end["rss"], "growth_bytes": growth, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
