"""Container leak detection on a real (private) Docker engine: how soon a steady leak is called, and how often
containers that do not leak are (false alarms).

The real memwardend watches a private dockerd (tests/support/docker_engine.py) with containers.leak_window
--window (default 10m: scales of 10 s, 1 min and 10 min), containers.leak_min_rate --min-rate (default 1MiB/h,
the shipped default) and daemon.sample_interval 500ms, containers.action alert. For --minutes (default 20) it
watches cycles over many periods (a day of a real rhythm cannot fit a bench; its periods can, at every scale):
  steady               8 MB held, nothing else;
  sawtooth, fast       grows 5 MB/s for 4 s, frees it all, 1 s low (period ≈ 6 s: about 200 periods);
  sawtooth, slow       grows 1 MB/s for 25 s, frees it all, 5 s low (period ≈ 33 s: about 36 periods);
  sawtooth, 2 min      grows 1 MB/s for 110 s, frees it all, 10 s low; started once the daemon is ready, with
                       its first tooth written at once, so watched from its top (about 10 periods);
  leak under the fast sawtooth  the fast sawtooth keeping 600 kB more at every drop (≈ 0.1 MB/s, 350 MB/h);
and, started once the daemon is ready, leakers writing 1, 5 and 20 MB/s into /dev/shm (--rates), each removed
as soon as it is called (to bound the memory they take).
Detection delay: Docker's StartedAt → the daemon's logged verdict "leak" (and → its container.leak alert).
Baselines, same run, same samples (the working sets the daemon reported, polled every 0.5 s): a naive detector
that calls a leak when the least-squares slope of the raw working set over the last minute is ≥ the min rate
(same 80 % coverage rule), and the goal for each rate (issue 16: 20 MB/s within 10 s, 1 MB/s within 60 s).
Needs root, dockerd and /bin/busybox; without them it prints why and exits 0.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import MIB, emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, managed, parser, ratio, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwarden.config.schema import rate as parse_rate
from memwarden.policies.leak import COVERAGE
from memwarden.units import parse_duration
from support.daemon import DaemonProcess, short_tmpdir
from support.docker_engine import DockerEngine, leaker, requirements, sawtooth, steady

POLL_S = 0.5
QUIET = {"steady": "steady", "saw-fast": "sawtooth, fast", "saw-slow": "sawtooth, slow",
         "saw-2min": "sawtooth, 2 min (from its top)"}
UNDER = {"saw-leak": "leak under the fast sawtooth"}
NAIVE_WINDOW = 60.0  # seconds: the naive baseline's window
GOALS = {20.0: 10.0, 1.0: 60.0}  # MB/s → seconds (issue 16)


def iso(ts: str) -> float:
    """RFC 3339 with up to nanoseconds (Docker) or microseconds (our logs) → epoch seconds."""
    head, _, frac = ts.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + (float("0." + frac) if frac else 0.0)


def ols_slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


def naive_flags(series: list[tuple[float, int]], window: float, min_rate: float) -> list[tuple[float, bool]]:
    """At each sample: is the least-squares slope over the trailing window ≥ min_rate (None while warming)?"""
    out = []
    start = 0
    for i, (t, _) in enumerate(series):
        while series[start][0] < t - window:
            start += 1
        pts = series[start:i + 1]
        if len(pts) < 5 or pts[-1][0] - pts[0][0] < window * COVERAGE:
            continue
        out.append((t, ols_slope([(a, float(b)) for a, b in pts]) >= min_rate))
    return out


def episodes(flags: list[bool]) -> int:
    return sum(1 for i, f in enumerate(flags) if f and (i == 0 or not flags[i - 1]))


def periods(values: list[int]) -> int:
    """Falls between two samples of a quarter of the series' range or more: the cycles observed."""
    if len(values) < 2:
        return 0
    cut = (max(values) - min(values)) / 4
    return sum(1 for a, b in itertools.pairwise(values) if cut > 0 and a - b >= cut)


class Sampler(threading.Thread):
    """Polls `containers` every POLL_S: the working set and verdict of each container, as the daemon saw them."""

    def __init__(self, daemon: DaemonProcess):
        super().__init__(name="sampler", daemon=True)
        self.d = daemon
        self.series: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        with self.d.client() as c:
            while not self._halt.is_set():
                t = time.time()
                try:
                    for r in c.call("containers.list")["containers"]:
                        self.series[r["name"]].append((t, r["working_set"], r["verdict"]))
                except Exception:  # noqa: BLE001 - counted; a benchmark keeps going
                    self.errors += 1
                self._halt.wait(max(0.0, POLL_S - (time.time() - t)))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0, help="how long the cycling containers are watched (20)")
    p.add_argument("--window", default="10m", help="containers.leak_window (default 10m)")
    p.add_argument("--min-rate", default="1MiB/h", help="containers.leak_min_rate (default 1MiB/h)")
    p.add_argument("--rates", default="1,5,20", help="leak rates in MB/s, comma-separated (default 1,5,20)")
    p.add_argument("--replay", action="store_true",
                   help="instead: pure replays through the policies, seeded (bench/leak_replay.py)")
    p.add_argument("--seeds", type=int, default=0,
                   help="with --replay: replay every series with this many other seeds and count the misses")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    if args.replay:
        return sweeps(args.seeds, args.json) if args.seeds else replays(args.json)
    title = "container leak detection"
    missing = requirements()
    if missing:
        emit(title, "skipped: a private Docker engine needs " + "; ".join(missing), {"skipped": missing}, args.json)
        return 0
    window, min_rate = parse_duration(args.window), parse_rate(args.min_rate)
    rates = [float(r) for r in args.rates.split(",")]
    leakers = {f"leak-{r:g}": r for r in rates}

    engine = DockerEngine()
    detected: dict[str, dict[str, Any]] = {}
    started: dict[str, float] = {}
    try:
        engine.start()
        engine.build_image()
        engine.run("steady", steady(8))
        engine.run("saw-fast", sawtooth(5, 4, 1))
        engine.run("saw-slow", sawtooth(1, 25, 5))
        engine.run("saw-leak", sawtooth(5, 4, 1, leak_kb_per_cycle=600), shm_size=f"{int(args.minutes * 8 + 64)}m")
        daemon = DaemonProcess({
            "daemon": {"sample_interval": f"{int(POLL_S * 1000)}ms", "log_level": "info"},
            "containers": {"enabled": True, "docker_url": engine.url, "leak_window": args.window,
                           "leak_min_rate": args.min_rate, "action": "alert"}}, workdir=short_tmpdir("mwbench"))
        with managed(daemon):
            sampler = Sampler(daemon)
            sampler.start()
            watch_from = time.time()
            # Started once the daemon is ready, so it is watched from its first sample: from its top.
            engine.run("saw-2min", sawtooth(1, 110, 10, top_first=True), shm_size="256m")
            for name, rate in leakers.items():
                shm = max(64, int(rate * 240 * 1.5))
                engine.run(name, leaker(rate), shm_size=f"{shm}m")
                started[name] = iso(engine.inspect(name)["State"]["StartedAt"])
            deadline = time.monotonic() + 180
            while len(detected) < len(leakers) and time.monotonic() < deadline:
                events = daemon.log_events()
                for name in leakers:
                    if name in detected:
                        continue
                    calls = [e for e in events if e.get("decision") == "container.verdict"
                             and e.get("container") == name and e.get("verdict") == "leak"]
                    if calls:
                        raised = [a for a in daemon.call("alerts", {"limit": 1000})["recent"]
                                  if a["kind"] == "container.leak" and a["key"] == name]
                        detected[name] = {"verdict_at": iso(calls[0]["timestamp"]),
                                          "alert_at": raised[-1]["raised_at"] if raised else None,
                                          "working_set": calls[0]["working_set"], "slope_bps": calls[0]["slope_bps"]}
                        engine.client().containers.get(name).remove(force=True)
                time.sleep(0.25)
            for name in leakers:  # not called in time: stop them anyway
                if name not in detected:
                    engine.client().containers.get(name).remove(force=True)
            remaining = watch_from + args.minutes * 60 - time.time()
            if remaining > 0:
                time.sleep(remaining)  # the quiet containers run on; the sampler records every pass
            watched_min = (time.time() - watch_from) / 60
            sampler.stop()
            events = daemon.log_events()
            alerts = daemon.call("alerts", {"limit": 10000})["recent"]
            dockerd = engine.client().version()["Version"]
    finally:
        engine.cleanup()

    # ---- detection delay ----
    det_rows, det_results = [], {}
    for name, rate in leakers.items():
        floor = GOALS.get(rate)
        series = [(t, ws) for t, ws, _ in sampler.series.get(name, [])]
        naive = next((t for t, flag in naive_flags(series, NAIVE_WINDOW, min_rate) if flag), None)
        naive_s = None if naive is None else naive - started[name]
        got = detected.get(name)
        verdict_s = None if got is None else got["verdict_at"] - started[name]
        alert_s = None if got is None or got["alert_at"] is None else got["alert_at"] - started[name]
        det_results[name] = {"rate_mb_s": rate, "verdict_s": verdict_s, "alert_s": alert_s, "naive_ols_s": naive_s,
                             "floor_s": floor, "working_set_at_verdict": got and got["working_set"],
                             "slope_bps": got and got["slope_bps"]}
        det_rows.append([f"{rate:g} MB/s", fmt(verdict_s), fmt(alert_s), fmt(naive_s), fmt(floor),
                         fmt_ratio(ratio(verdict_s, floor)), fmt_ratio(ratio(verdict_s, naive_s)),
                         "—" if got is None else fmt(got["working_set"] / MIB)])
    text = table(["leak", "start → verdict leak (s)", "start → alert (s)", "baseline: naive OLS, 1 min (s)",
                  "goal (s)", "verdict ÷ goal", "verdict ÷ naive", "working set at verdict (MiB)"], det_rows)

    # ---- false alarms ----
    fa_rows, fa_results = [], {}
    for name, label in {**QUIET, **UNDER}.items():
        samples = sampler.series.get(name, [])
        judged = [v for _, _, v in samples if v != "warming"]
        logged = [e["verdict"] for e in events if e.get("decision") == "container.verdict"
                  and e.get("container") == name]
        leak_calls = sum(1 for v in logged if v == "leak")
        leak_alerts = sum(1 for a in alerts if a["kind"] == "container.leak" and a["key"] == name)
        flags = [f for _, f in naive_flags([(t, ws) for t, ws, _ in samples], NAIVE_WINDOW, min_rate)]
        verdict_counts = {v: judged.count(v) for v in sorted(set(judged))}
        ws = [w for _, w, _ in samples]
        first_leak = next((t for t, _, v in samples if v == "leak"), None)
        calls = [{"at_s": round(iso(e["timestamp"]) - watch_from, 1), "scale_s": e.get("scale_s"),
                  "slope_bps": e.get("slope_bps"), "growth": e.get("growth_bytes"), "noise": e.get("noise_bytes")}
                 for e in events if e.get("decision") == "container.verdict" and e.get("container") == name
                 and e.get("verdict") == "leak"]
        fa_results[name] = {"samples": len(samples), "judged": len(judged), "leak_verdicts": leak_calls,
                            "periods": periods(ws), "leak_calls": calls,
                            "first_leak_s": None if first_leak is None else first_leak - samples[0][0],
                            "leak_alerts": leak_alerts, "verdicts": verdict_counts,
                            "naive_alarms": episodes(flags), "naive_share": sum(flags) / len(flags) if flags else None,
                            "working_set_mib": [round(min(ws) / MIB, 1), round(statistics.median(ws) / MIB, 1),
                                                round(max(ws) / MIB, 1)] if ws else None}
        share = (judged.count("leak") / len(judged)) if judged else None
        fa_rows.append([label, fa_results[name]["periods"], len(judged), leak_calls, leak_alerts,
                        fmt(None if share is None else share * 100),
                        episodes(flags), fmt(None if not flags else sum(flags) / len(flags) * 100),
                        ", ".join(f"{v} {n}" for v, n in verdict_counts.items())])
    text += "\n\n" + table(["container", "periods seen", "passes judged", "leak verdicts", "container.leak alerts",
                            "% passes leak", "baseline: naive OLS alarms", "naive % passes", "verdicts seen"],
                           fa_rows)
    text += (f"\n\nConfig: leak_window {args.window}, leak_min_rate {args.min_rate} ({min_rate / 1024:.1f} KiB/s), "
             f"sample_interval 500ms; the cycling containers watched for {watched_min:.1f} min ({sampler.errors} "
             f"failed polls). dockerd {dockerd}, private engine, busybox containers with --network none; the leaks "
             "are files written into /dev/shm (shmem, counted in the cgroup's working set). \"passes judged\": "
             "polls of `containers` once the verdict was no longer warming.")
    emit(title, text, {"window_s": window, "min_rate_bps": min_rate, "minutes": round(watched_min, 2),
                       "dockerd": dockerd, "detection": det_results, "cycles": fa_results,
                       "sampler_errors": sampler.errors}, args.json)
    return 0


def replays(as_json: bool) -> int:
    import leak_replay

    det, fa, results = leak_replay.run()
    def s(v: Any) -> str:
        return "never" if v is None else (f"{v:g} s" if v < 600 else f"{v / 60:g} min")
    text = table(["leak", "replayed", "first alarm", "scale", "alarms", "leak at end", "goal",
                  "baseline first alarm", "baseline alarms"],
                 [[r[0], r[1], s(r[2]), s(r[3]), r[4], r[5], s(r[6]) if r[6] else "-", s(r[7]), r[8]] for r in det])
    text += "\n\n" + table(["benign, 24 h", "alarms", "first alarm", "baseline alarms", "policy CPU s",
                              "baseline CPU s"], [[r[0], r[1], s(r[2]), r[3], r[4], r[5]] for r in fa])
    text += "\n\n" + leak_replay.__doc__.split("\n\n")[1].replace("\n", " ")
    emit("leak detection, pure replays", text, results, as_json)
    return 0


def sweeps(seeds: int, as_json: bool) -> int:
    import leak_replay

    rows, results = leak_replay.sweep(seeds)
    leaks = {label for label, *_ in leak_replay.LEAKS}
    def s(v: Any) -> str:
        return "never" if v is None else (f"{v:g} s" if v < 600 else f"{v / 60:g} min")
    text = table(["series", "seeds", "leak: seeds late for the goal", "leak: seeds not one alarm / benign: seeds "
                  "with an alarm", "leak: latest first alarm / benign: alarms in all"],
                 [[*r[:4], s(r[4]) if r[0] in leaks else r[4]] for r in rows])
    emit(f"leak detection, pure replays over {seeds} seeds", text, results, as_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
