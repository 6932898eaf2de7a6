"""Memory ingest rate: memories/s through MemoryStore.import_lines and through `memwardenctl memories import`.

--lines JSONL memories (default 100,000; ~250 bytes each, 5 profiles, 7 kinds, a fifth with a response, one
route; with --cues F, that fraction of them carries a cue, about two memories per profile and cue, so that the
later supersedes the earlier) are imported --repeat times (default 3) each way; the
median is reported:
  in process   MemoryStore.import_lines (parse, validate every line, route, one transaction) on a fresh
               state database (open_state: WAL, synchronous NORMAL, the real schema);
  end to end   `memwardenctl memories import FILE` against a running memwardend: the CLI process, chunks of
               < 1 MiB over the control socket, staging in a TEMP table, one commit transaction.
Baseline, same run, same rows: plain sqlite3 `executemany` of the already-parsed, already-routed tuples into
the same `memories` table of a fresh state database, in one transaction. While each end-to-end import runs,
a thread times `status` round trips, to show how long the daemon's loop is held up by the import.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, managed, parser, percentile, ratio, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwarden.control.client import Client
from memwarden.learning.store import COLUMNS, MemoryStore, parse_line
from memwarden.state.db import open_state
from support.daemon import BIN, DaemonProcess, short_tmpdir, toml

GOAL = 10_000.0  # memories/s
ROUTES = (("dreams", (), ("dream",)),)
ROUTES_TOML = '\n[[learning.routes]]\nadapter = "dreams"\nkinds = ["dream"]\n'
KINDS = ("conversation", "inner_dialogue", "reflection", "dream", "journal", "observation", "note")
WORDS = ("river", "morning", "light", "quiet", "train", "garden", "letter", "window", "coffee", "rain", "music",
         "friend", "walk", "book", "dream", "city", "winter", "sea", "road", "voice")


def make_lines(n: int, seed: int = 1, cues: float = 0.0) -> list[str]:
    rng = random.Random(seed)
    pool = max(1, round(n * cues / 10))  # five profiles: about two memories per (profile, cue)
    out = []
    for i in range(n):
        rec: dict[str, Any] = {
            "profile": f"user{i % 5}", "kind": KINDS[i % len(KINDS)],
            "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))),
            "importance": rng.randint(1, 10), "created_at": 1.7e9 + i}
        if i % 5 == 0:
            rec["response"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15)))
        if cues and rng.random() < cues:
            rec["cue"] = f"day {rng.randrange(pool)}"
        out.append(json.dumps(rec))
    return out


def in_process(lines: list[str]) -> float:
    workdir = short_tmpdir("mwbench")
    try:
        db = open_state(workdir)
        store = MemoryStore(db, ROUTES)
        t0 = time.perf_counter()
        result = store.import_lines(lines)
        elapsed = time.perf_counter() - t0
        assert result["imported"] == len(lines) == db["memories"].count
        db.close()
        return elapsed
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def baseline(rows: list[tuple]) -> float:
    workdir = short_tmpdir("mwbench")
    try:
        db = open_state(workdir)
        conn = db.conn
        sql = f"INSERT INTO memories ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        assert db["memories"].count == len(rows)
        db.close()
        return elapsed
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class StatusProbe(threading.Thread):
    """`status` round trips, back to back, while an import runs."""

    def __init__(self, sock: Path):
        super().__init__(daemon=True)
        self.sock = sock
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with Client(self.sock, 60.0) as c:
            while not self._halt.is_set():
                t0 = time.perf_counter()
                c.call("status")
                self.samples.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.005)

    def stop(self) -> list[float]:
        self._halt.set()
        self.join(60)
        return self.samples


def end_to_end(daemon: DaemonProcess, path: Path, expected_total: int) -> tuple[float, list[float]]:
    probe = StatusProbe(daemon.socket_path)
    probe.start()
    try:
        t0 = time.perf_counter()
        out = subprocess.run([BIN / "memwardenctl", "--socket", daemon.socket_path, "memories", "import", path],
                             capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - t0
    finally:
        samples = probe.stop()
    if out.returncode != 0:
        raise RuntimeError(f"memwardenctl memories import failed: {out.stderr.strip()}")
    total = daemon.call("memories.count")["total"]
    assert total == expected_total, (total, expected_total)
    return elapsed, samples


def idle_status(daemon: DaemonProcess, seconds: float = 2.0) -> list[float]:
    probe = StatusProbe(daemon.socket_path)
    probe.start()
    time.sleep(seconds)
    return probe.stop()


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=100_000, help="memories per import (default 100,000)")
    p.add_argument("--repeat", type=int, default=3, help="imports per way (default 3; the median is reported)")
    p.add_argument("--cues", type=float, default=0.0, help="the fraction of memories with a cue (default 0)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    lines = make_lines(args.lines, cues=args.cues)
    file_bytes = sum(len(x) + 1 for x in lines)
    probe_store = MemoryStore(open_state(short_tmpdir("mwbench")), ROUTES)
    rows = [probe_store._row(parse_line(x, n)) for n, x in enumerate(lines, 1)]
    shutil.rmtree(Path(probe_store.db.conn.execute("PRAGMA database_list").fetchone()[2]).parent,
                  ignore_errors=True)
    probe_store.db.close()

    times: dict[str, list[float]] = {"in_process": [], "end_to_end": [], "baseline": []}
    during: list[float] = []
    with contextlib.ExitStack() as stack:
        daemon = DaemonProcess({"daemon": {"sample_interval": "1s", "log_level": "info"}},
                               workdir=short_tmpdir("mwbench"))
        daemon.write_config(toml(daemon.sections) + ROUTES_TOML)
        stack.enter_context(managed(daemon))
        path = daemon.workdir / "memories.jsonl"
        path.write_text("\n".join(lines) + "\n")
        idle = idle_status(daemon)
        for r in range(args.repeat):  # interleaved, so that the machine's drift hits every way alike
            times["baseline"].append(baseline(rows))
            times["in_process"].append(in_process(lines))
            elapsed, samples = end_to_end(daemon, path, (r + 1) * args.lines)
            times["end_to_end"].append(elapsed)
            during.extend(samples)

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: args.lines / v for k, v in med.items()}
    results: dict[str, Any] = {
        "lines": args.lines, "file_bytes": file_bytes, "repeat": args.repeat, "goal_per_s": GOAL, "cues": args.cues,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "per_s": {k: round(v) for k, v in rate.items()},
        "ratio_in_process": round(rate["in_process"] / rate["baseline"], 3),
        "ratio_end_to_end": round(rate["end_to_end"] / rate["baseline"], 3),
        "status_ms_idle": {"p50": round(percentile(idle, 50), 2), "p99": round(percentile(idle, 99), 2),
                           "max": round(max(idle), 2), "n": len(idle)},
        "status_ms_during_import": {"p50": round(percentile(during, 50), 2), "p99": round(percentile(during, 99), 2),
                                    "max": round(max(during), 2), "n": len(during)},
    }
    rows_out = [
        ["MemoryStore.import_lines (in process)", f"{rate['in_process']:,.0f}", fmt(med["in_process"], 2),
         f"{rate['baseline']:,.0f}", fmt_ratio(ratio(rate["in_process"], rate["baseline"])),
         "yes" if rate["in_process"] >= GOAL else "NO"],
        ["memwardenctl memories import (end to end)", f"{rate['end_to_end']:,.0f}", fmt(med["end_to_end"], 2),
         f"{rate['baseline']:,.0f}", fmt_ratio(ratio(rate["end_to_end"], rate["baseline"])),
         "yes" if rate["end_to_end"] >= GOAL else "NO"],
    ]
    text = table(["ingest path", "memories/s", "median s", "baseline: raw sqlite3 executemany (memories/s)",
                  "ratio", f"≥ {GOAL:,.0f}/s"], rows_out)
    s_idle, s_during = results["status_ms_idle"], results["status_ms_during_import"]
    text += "\n\n" + table(
        ["status round trip (ms)", "p50", "p99", "max", "calls"],
        [["daemon idle", fmt(s_idle["p50"], 2), fmt(s_idle["p99"], 2), fmt(s_idle["max"], 2), s_idle["n"]],
         ["during the end-to-end imports", fmt(s_during["p50"], 2), fmt(s_during["p99"], 2),
          fmt(s_during["max"], 2), s_during["n"]]])
    text += (f"\n\n{args.lines:,} memories per import ({file_bytes / 1e6:.1f} MB of JSONL), median of "
             f"{args.repeat} imports per way, the ways interleaved. Seconds per import: "
             + "; ".join(f"{k.replace('_', ' ')} {', '.join(f'{x:.2f}' for x in v)}" for k, v in times.items())
             + ". The baseline inserts tuples already parsed and routed; the end-to-end figure includes starting "
             "memwardenctl. Each end-to-end import lands in the same daemon's database (it holds "
             f"{args.repeat * args.lines:,} memories at the end); sample_interval 1s, log_level info.")
    emit("memory ingest", text, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
