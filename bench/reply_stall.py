"""The longest event-loop stall while 25 clients each pull the largest page of memories and never read it.

The store holds --memories memories of --chars characters (10,000 × 5,000: about 50 MB). Each of --clients
clients connects, asks `memories.list limit=10000` four times over (pipelined) and reads nothing; when the daemon
drops it (its reply made no progress for 10 s) it connects and asks again, for --seconds. Meanwhile a prober
calls `status` back to back on its own connection: its longest round trip is the longest the daemon's loop stood
still (plus one round trip). The daemon's RSS is read every 50 ms.
Baseline, same run, same daemon: the prober alone for --seconds before the clients start.
Goal: the longest status round trip ≤ 100 ms with the clients hanging.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
from _common import (
    MIB,
    cpu_pressure,
    emit,
    exit_cleanly_on_sigterm,
    fmt,
    fmt_ratio,
    managed,
    parser,
    ratio,
    stats,
    table,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwarden.control.client import Client
from memwarden.learning.store import MemoryStore
from memwarden.state.db import open_state
from support.daemon import DaemonProcess, short_tmpdir

GOAL_STALL_MS = 100.0
REQUEST = json.dumps({"jsonrpc": "2.0", "method": "memories.list", "params": {"limit": 10000},
                      "id": 1}).encode() + b"\n"


def fill(state_dir: Path, count: int, chars: int) -> None:
    db = open_state(state_dir)
    try:
        MemoryStore(db).import_lines(json.dumps({"profile": "alice", "kind": "journal", "importance": 5,
                                                 "created_at": i, "content": f"{i:06d} " + "m" * (chars - 7)})
                                     for i in range(count))
    finally:
        db.conn.close()


class Prober(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.client = Client(path, 60.0)
        self.rtts: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t0 = time.perf_counter_ns()
            self.client.call("status")
            self.rtts.append((time.perf_counter_ns() - t0) / 1e6)

    def window(self, seconds: float) -> list[float]:
        start = len(self.rtts)
        time.sleep(seconds)
        return self.rtts[start:]


class Hogs(threading.Thread):
    """Clients that ask for the largest page and never read; reconnect once dropped."""

    def __init__(self, path: Path, count: int):
        super().__init__(daemon=True)
        self.path, self.count = path, count
        self.halt = threading.Event()
        self.asked = 0
        self.dropped = 0
        self.socks: list[socket.socket] = []

    def open(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(str(self.path))
        s.sendall(REQUEST * 4)
        self.asked += 4
        return s

    def run(self) -> None:
        self.socks = [self.open() for _ in range(self.count)]
        poller = select.poll()
        while not self.halt.is_set():
            poller = select.poll()
            for s in self.socks:
                poller.register(s, 0)  # hang-ups only: the data is never read
            gone = {fd for fd, ev in poller.poll(200) if ev & (select.POLLHUP | select.POLLERR)}
            for i, s in enumerate(self.socks):
                if s.fileno() in gone:
                    s.close()
                    self.dropped += 1
                    self.socks[i] = self.open()
        for s in self.socks:
            s.close()


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=25, help="clients that never read (default 25)")
    p.add_argument("--memories", type=int, default=10_000, help="memories in the store (default 10,000)")
    p.add_argument("--chars", type=int, default=5_000, help="characters per memory (default 5,000)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds per phase (default 30)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    with contextlib.ExitStack() as stack:
        daemon = DaemonProcess({"daemon": {"sample_interval": "1s", "log_level": "info"}},
                               workdir=short_tmpdir("mwbench"))
        fill(daemon.workdir / "state", args.memories, args.chars)
        store_bytes = (daemon.workdir / "state" / "memwarden.db").stat().st_size
        stack.enter_context(managed(daemon))
        proc = psutil.Process(daemon.pid)
        daemon.call("memories.list", {"limit": 10000})  # warm-up: the page workers and SQLite's cache
        prober = Prober(daemon.socket_path)
        prober.start()
        stack.callback(prober.halt.set)
        rss_start = proc.memory_info().rss
        baseline = prober.window(args.seconds)
        peak = [rss_start]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                with contextlib.suppress(psutil.Error):
                    peak[0] = max(peak[0], proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        hogs = Hogs(daemon.socket_path, args.clients)
        hogs.start()
        try:
            attacked = prober.window(args.seconds)
        finally:
            hogs.halt.set()
            hogs.join(30)
            sampling.set()
            sampler.join(5)
            prober.halt.set()
            prober.join(60)

    pressure = cpu_pressure()
    a, b = stats(attacked), stats(baseline)
    rows = [[f"{q} (ms)", fmt(a[f"{q}_ms"], 3), fmt(b[f"{q}_ms"], 3), fmt_ratio(ratio(a[f"{q}_ms"], b[f"{q}_ms"]))]
            for q in ("p50", "p99", "max")]
    growth = (peak[0] - rss_start) / MIB
    text = table(["status round trip", f"{args.clients} clients not reading", "baseline: prober alone", "ratio"],
                 rows)
    text += (f"\n\nLongest stall seen by the prober: {a['max_ms']:.1f} ms (goal ≤ {GOAL_STALL_MS:g} ms: "
             f"{'met' if a['max_ms'] <= GOAL_STALL_MS else 'NOT met'}). Store: {args.memories:,} memories of "
             f"{args.chars:,} characters ({store_bytes / 1e6:.0f} MB). {hogs.asked} pages asked for, none read; "
             f"{hogs.dropped} connections dropped by the daemon and reopened. Daemon RSS {rss_start / MIB:.0f} MiB "
             f"before, peak {peak[0] / MIB:.0f} MiB (+{growth:.0f} MiB). {args.seconds:g} s per phase. Host CPU "
             f"pressure (PSI some avg60) at the end: {fmt(pressure)} %.")
    emit("reply stall", text, {"attacked": a, "baseline": b, "store_bytes": store_bytes, "pages_asked": hogs.asked,
                               "dropped": hogs.dropped, "rss_start_bytes": rss_start, "rss_peak_bytes": peak[0],
                               "ratio_max": round(a["max_ms"] / b["max_ms"], 3), "cpu_pressure_avg60": pressure},
         args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
