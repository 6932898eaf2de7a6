"""Cost of one container sample pass over --containers containers (default 30) on a real (private) Docker engine.

  ContainerProbe.read()       memwarden's probe: the running set kept by the events thread, memory read from each
                              container's cgroup files (no Docker call in the pass);
Baselines, same run, same containers:
  naive: container.stats(stream=False) per container, after containers.list() — what a script using the docker
                              SDK does (Docker samples twice, a second apart, for each container);
  one_shot stats per container  the same with one_shot=True (API ≥ 1.41: one sample, no wait), the fastest the
                              stats API gets.
The three read the same containers: --passes passes of the probe (after 5 untimed), --api-passes of each baseline.
Needs root, dockerd and /bin/busybox (see tests/support/docker_engine.py); without them it prints why and exits 0.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, parser, percentile, ratio, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwarden.probes.containers import ContainerProbe, DockerUnavailable
from support.docker_engine import DockerEngine, requirements, steady


def timed(fn: Callable[[], Any], passes: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def stats(ms: list[float]) -> dict[str, Any]:
    return {"passes": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3)}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--containers", type=int, default=30, help="containers to watch (default 30)")
    p.add_argument("--passes", type=int, default=200, help="timed ContainerProbe.read() passes (default 200)")
    p.add_argument("--api-passes", type=int, default=3,
                   help="timed passes of each stats-API baseline (default 3; a pass takes 20–60 s at 30 containers)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    title = "container sample pass cost"
    missing = requirements()
    if missing:
        emit(title, "skipped: a private Docker engine needs " + "; ".join(missing), {"skipped": missing}, args.json)
        return 0

    engine = DockerEngine()
    probe: ContainerProbe | None = None
    try:
        engine.start()
        engine.build_image()
        for i in range(args.containers):
            engine.run(f"c{i:02d}", steady(1), shm_size="64m")
        client = engine.client()
        engine_version = client.version()["Version"]
        ids = [c.id for c in client.containers.list()]
        assert len(ids) == args.containers, f"{len(ids)} of {args.containers} containers running"

        probe = ContainerProbe(engine.url, timeout=30.0)
        deadline = time.monotonic() + 30
        while True:
            try:
                snap = probe.read()
                if len(snap.containers) == args.containers:
                    break
            except DockerUnavailable:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("ContainerProbe never saw every container")
            time.sleep(0.05)
        sources = sorted({c.source for c in snap.containers})
        fallbacks_before = probe.api_fallbacks

        def naive() -> None:
            for c in client.containers.list():
                c.stats(stream=False)["memory_stats"]["usage"]

        def one_shot() -> None:
            for c in client.containers.list():
                client.api.stats(c.id, stream=False, one_shot=True)["memory_stats"]["usage"]

        rows = {"ContainerProbe.read()": stats(timed(probe.read, args.passes, 5)),
                "baseline: containers.list() + container.stats(stream=False) each": stats(
                    timed(naive, args.api_passes, 0)),
                "baseline: containers.list() + api.stats(one_shot=True) each": stats(
                    timed(one_shot, args.api_passes, 0))}
        fallbacks = probe.api_fallbacks - fallbacks_before
    finally:
        if probe is not None:
            probe.close()
        engine.cleanup()

    base = rows["ContainerProbe.read()"]["p50_ms"]
    lines = [[name, r["passes"], fmt(r["p50_ms"], 2), fmt(r["min_ms"], 2), fmt(r["max_ms"], 2),
              fmt_ratio(ratio(r["p50_ms"], base))] for name, r in rows.items()]
    text = table(["one pass over all containers", "passes", "p50 (ms)", "min (ms)", "max (ms)",
                  "÷ ContainerProbe.read() p50"], lines)
    per = base / args.containers * 1000
    text += (f"\n\n{args.containers} running containers (busybox sh + sleep, 1 MB held in /dev/shm each) on a private "
             f"dockerd {engine_version} (cgroup v{snap.cgroup_version}, read from: {', '.join(sources)}; API "
             f"fallbacks during the timed passes: {fallbacks}). ContainerProbe.read() costs {per:.0f} µs per "
             "container; its events thread had synced before timing. The naive pass is what `docker stats "
             "--no-stream` does per container: Docker waits for a second sample.")
    emit(title, text, {"containers": args.containers, "cgroup_version": snap.cgroup_version, "sources": sources,
                       "api_fallbacks": fallbacks, "dockerd": engine_version, "rows": rows,
                       "ratio_naive_p50": round(rows[list(rows)[1]]["p50_ms"] / base, 1),
                       "ratio_one_shot_p50": round(rows[list(rows)[2]]["p50_ms"] / base, 1)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
