"""Shared helpers for the bench scripts: tables, percentiles, JSON output and clean exits.

Every figure is printed next to a baseline measured in the same run and their ratio: the machines these
run on are noisy, so the ratio is the number worth comparing between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true",
                   help="after the table, print the results as one JSON object on the last line")
    return p


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so every `finally` stops what it started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def difference_row(title: str, values: dict[str, float], baseline: str, other: str) -> list[str]:
    """A row comparing two timings in seconds: the title, the baseline's, the other's, and their difference."""
    return [title, fmt(values[baseline], 2), fmt(values[other], 2), f"{values[other] - values[baseline]:+.2f} s"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for row in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if row.startswith("Model name:"):
                model = row.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = int(subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip())
    except (OSError, ValueError):
        cores = None
    return {
        **source_revision(),
        "cpu_model": model or platform.processor() or "unknown",
        "cores": cores,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def source_revision() -> dict[str, Any]:
    """The commit measured, and whether the daemon's source differed from it (read-only git calls)."""
    root = __file__.rsplit("/bench/", 1)[0]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                                  check=False).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    return {"commit": commit or None,
            "daemon_source_modified": bool(git("status", "--porcelain", "--", "daemon")) if commit else None}


def emit(title: str, text: str, results: dict[str, Any], as_json: bool) -> None:
    print(f"### {title}\n")
    print(text)
    print(flush=True)
    if as_json:
        print(json.dumps({"benchmark": title, "machine": machine(), **results}, sort_keys=True), flush=True)


def kill_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Stop a child this script started: SIGTERM, then SIGKILL; always reaped."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NotifyDrain(threading.Thread):
    """Reads the daemon's sd_notify datagrams for as long as it runs, as systemd does.

    support.daemon's NotifyListener reads only inside wait_for(). Once READY=1 has arrived nobody would read
    the STATUS= datagram the daemon sends every sample pass, and net.unix.max_dgram_qlen (10 here) datagrams
    later the daemon's blocking sendto() stalls its event loop: no more control calls, no more SIGTERM
    (see BENCHMARKS.md). A benchmark that outlives that must play systemd's part."""

    def __init__(self, sock: Any):
        super().__init__(name="notify-drain", daemon=True)
        self.sock = sock
        self.received = 0
        self.last = b""
        self._halt = threading.Event()

    def run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._halt.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            self.last = data

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@contextlib.contextmanager
def managed(daemon: Any) -> Iterator[NotifyDrain]:
    """Start `daemon` (a support.daemon.DaemonProcess) and wait for READY=1, keep its notify socket drained,
    and whatever happens stop it, kill it if SIGTERM is not enough, and remove its temp dir."""
    drain: NotifyDrain | None = None
    try:
        daemon.start()
        drain = NotifyDrain(daemon.notify.sock)
        drain.start()
        yield drain
    except Exception:
        tail = daemon.log().splitlines()[-30:]
        print("memwardend log (last 30 lines):", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        try:
            if daemon.proc is not None:
                try:
                    daemon.stop()
                except subprocess.TimeoutExpired:
                    raise RuntimeError("memwardend ignored SIGTERM for 20 s; killed it") from None
        finally:
            if drain is not None:
                drain.stop()
            daemon.cleanup()


def cpu_pressure() -> float | None:
    """The host's CPU pressure (PSI `some` avg60, % of time a task waited for a CPU): the noise in the figures."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(f.split("=") for f in line.split()[1:])["avg60"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": round(percentile(values, 50), 3), "p99_ms": round(percentile(values, 99), 3),
            "max_ms": round(max(values), 3)}
