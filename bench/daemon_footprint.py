"""memwardend's resting footprint: RSS and CPU % of one core with daemon.sample_interval = "1s".

Counting starts once the daemon has sent READY=1 (startup is bench/startup.py's figure). Over the window the
daemon's RSS is read from /proc (psutil) every --poll seconds, and its CPU time is read at both ends.
Baseline, measured over the same window: an idle `python -c "import time; time.sleep(...)"` of the same
interpreter, i.e. what the bare interpreter costs before memwarden imports anything.

Goals: RSS ≤ 45 MB (10^6 bytes), CPU ≤ 0.5 % of one core.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from _common import (
    emit,
    exit_cleanly_on_sigterm,
    fmt,
    fmt_ratio,
    kill_process,
    managed,
    parser,
    ratio,
    table,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.daemon import DaemonProcess, short_tmpdir

MB = 1_000_000
GOAL_RSS_MB = 45.0
GOAL_CPU_PERCENT = 0.5


class Watch:
    """RSS samples and CPU time of one process over a window."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.rss: list[int] = []
        self.t0 = time.monotonic()
        self.cpu0 = self._cpu()
        self.t1 = self.t0
        self.cpu1 = self.cpu0
        self.end: dict[str, int] = {}

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def sample(self) -> None:
        self.rss.append(self.proc.memory_info().rss)

    def finish(self) -> None:
        self.t1 = time.monotonic()
        self.cpu1 = self._cpu()
        with self.proc.oneshot():
            full = self.proc.memory_full_info()
            self.end = {"rss": full.rss, "uss": full.uss, "pss": full.pss,
                        "threads": self.proc.num_threads(), "fds": self.proc.num_fds()}
        self.rss.append(full.rss)

    @property
    def cpu_percent(self) -> float:
        return 100 * (self.cpu1 - self.cpu0) / (self.t1 - self.t0)

    def summary(self) -> dict[str, float | int]:
        return {
            "window_s": round(self.t1 - self.t0, 3),
            "cpu_s": round(self.cpu1 - self.cpu0, 3),
            "cpu_percent": round(self.cpu_percent, 4),
            "rss_max_bytes": max(self.rss),
            "rss_end_bytes": self.end["rss"],
            "uss_end_bytes": self.end["uss"],
            "pss_end_bytes": self.end["pss"],
            "threads": self.end["threads"],
            "open_fds": self.end["fds"],
            "rss_samples": len(self.rss),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="measurement window after READY (default 60)")
    p.add_argument("--poll", type=float, default=0.5, help="RSS sampling period in seconds (default 0.5)")
    p.add_argument("--with-ollama", action="store_true",
                   help="the daemon also watches the Ollama double (one model loaded) on a 12 GiB sim GPU")
    p.add_argument("--everything", action="store_true",
                   help="--with-ollama, and the proxy, the container watch (the local dockerd), /metrics and "
                        "learning (idle: no memories) on")
    args = p.parse_args()
    args.with_ollama = args.with_ollama or args.everything
    exit_cleanly_on_sigterm()

    with contextlib.ExitStack() as stack:
        # The baseline starts first so that it has long finished starting up when the window opens.
        sleeper = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({args.seconds + 600:.0f})"])
        stack.callback(kill_process, sleeper)
        config: dict = {"daemon": {"sample_interval": "1s", "log_level": "info"}}
        workdir = short_tmpdir("mwbench")
        if args.with_ollama:
            from support.ollama_double import OllamaDouble
            from support.ollama_double.manager import sim_gpu

            sim = sim_gpu(workdir / "gpu.json", 12 * 1024**3)
            double = OllamaDouble(sim, [{"name": "m:1b", "size": 1024**3}], workdir=workdir / "od").start()
            stack.callback(double.cleanup)
            double.load("m:1b", keep_alive=-1)
            config.update(gpu={"backend": "sim", "sim_file": str(sim)}, ollama={"url": double.url})
        if args.everything:
            (workdir / "base").mkdir()
            config.update(proxy={"enabled": True, "listen": f"127.0.0.1:{free_port()}"},
                          containers={"enabled": True},
                          metrics={"enabled": True, "listen": f"127.0.0.1:{free_port()}"},
                          learning={"enabled": True, "base_model": str(workdir / "base")})
        daemon = DaemonProcess(config, workdir=workdir)
        drain = stack.enter_context(managed(daemon))  # returns once READY=1 has arrived
        base, mine = Watch(sleeper.pid), Watch(daemon.pid)
        notified0 = drain.received
        deadline = mine.t0 + args.seconds
        while (now := time.monotonic()) < deadline:
            mine.sample()
            base.sample()
            time.sleep(min(args.poll, deadline - now))
        mine.finish()
        base.finish()
        notified = drain.received - notified0
        # Only after the window, so these calls cost the measured CPU nothing.
        status = daemon.call("status")
        diag = daemon.call("diagnostics")

    d, b = mine.summary(), base.summary()
    rss_max_mb, rss_end_mb = d["rss_max_bytes"] / MB, d["rss_end_bytes"] / MB
    rss_ok = rss_max_mb <= GOAL_RSS_MB
    cpu_ok = d["cpu_percent"] <= GOAL_CPU_PERCENT

    def row(label: str, key: str, scale: float = MB, goal: str = "", met: str = "") -> list[str]:
        return [label, fmt(d[key] / scale), fmt(b[key] / scale), fmt_ratio(ratio(d[key], b[key])), goal, met]

    rows = [
        row("RSS max (MB)", "rss_max_bytes", goal=f"≤ {GOAL_RSS_MB:g}", met="yes" if rss_ok else "**no**"),
        row("RSS at end (MB)", "rss_end_bytes"),
        row("USS at end (MB)", "uss_end_bytes"),
        ["CPU (% of one core)", fmt(d["cpu_percent"], 3), fmt(b["cpu_percent"], 3), "—",
         f"≤ {GOAL_CPU_PERCENT:g}", "yes" if cpu_ok else "**no**"],
        ["CPU time in window (s)", fmt(d["cpu_s"], 2), fmt(b["cpu_s"], 2), "—", "", ""],
        ["threads", d["threads"], b["threads"], fmt_ratio(ratio(d["threads"], b["threads"])), "", ""],
        ["open fds", d["open_fds"], b["open_fds"], fmt_ratio(ratio(d["open_fds"], b["open_fds"])), "", ""],
    ]
    text = table(["metric", "memwardend", "baseline: idle python", "ratio", "goal", "met"], rows)
    text += (f"\n\nWindow {d['window_s']:.1f} s after READY=1, sample_interval 1s "
             f"({status['last_sample']['count']} sample passes by the end, last one "
             f"{status['last_sample']['duration_ms']} ms; {notified} sd_notify datagrams read meanwhile); "
             f"RSS polled every {args.poll:g} s ({d['rss_samples']} readings). MB = 10^6 bytes; CPU time is counted "
             f"in ticks of {1000 / os.sysconf('SC_CLK_TCK'):g} ms. "
             f"Python {diag['python']}; heavy modules loaded: {diag['heavy_modules_loaded'] or 'none'}.")
    results = {
        "seconds": args.seconds,
        "sample_interval_s": 1.0,
        "daemon": d,
        "baseline_idle_python": b,
        "rss_ratio_max": round(d["rss_max_bytes"] / b["rss_max_bytes"], 4),
        "rss_ratio_end": round(d["rss_end_bytes"] / b["rss_end_bytes"], 4),
        "goals": {"rss_mb": GOAL_RSS_MB, "cpu_percent": GOAL_CPU_PERCENT},
        "met": {"rss": rss_ok, "cpu": cpu_ok},
        "rss_end_mb": round(rss_end_mb, 2),
        "sample_passes": status["last_sample"]["count"],
        "notify_datagrams_in_window": notified,
        "diagnostics": diag,
    }
    on = "everything on" if args.everything else "with the Ollama double" if args.with_ollama else "defaults"
    emit(f"Daemon footprint (sample_interval 1s, {on})", text, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
