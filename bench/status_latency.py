"""`status` round-trip latency over the control socket, against a minimal asyncio line server.

Two ways of calling, each --calls times (default 1,000) after --warmup untimed calls:
  persistent  one memwarden.control.client.Client connection for every call;
  per call    a new Client (connect, call, close) for each call.
Baseline, same run, same client framing: a minimal asyncio unix-socket server in a subprocess of the same
interpreter that reads one JSON line and answers one JSON-RPC result line. Daemon and baseline calls are
interleaved in blocks so drift on a noisy machine hits both alike.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    emit,
    exit_cleanly_on_sigterm,
    fmt,
    fmt_ratio,
    kill_process,
    managed,
    parser,
    percentile,
    ratio,
    table,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwarden.control.client import Client, ConnectError
from support.daemon import DaemonProcess, short_tmpdir

ECHO_SERVER = r"""
import asyncio, json, sys

async def handle(reader, writer):
    while line := await reader.readline():
        req = json.loads(line)
        writer.write(json.dumps({"jsonrpc": "2.0", "id": req.get("id"), "result": {"ok": True}},
                                separators=(",", ":")).encode() + b"\n")
        await writer.drain()
    writer.close()

async def main(path):
    server = await asyncio.start_unix_server(handle, path=path, limit=1024 * 1024)
    async with server:
        await server.serve_forever()

asyncio.run(main(sys.argv[1]))
"""


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the baseline server exited with {proc.returncode}")
        try:
            Client(path, 1.0).close()
            return
        except ConnectError:
            time.sleep(0.02)
    raise TimeoutError(f"the baseline server never listened on {path}")


def persistent(path: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    client = Client(path, 10.0)
    return (lambda: client.call("status")), client.close


def per_call(path: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    def once() -> None:
        with Client(path, 10.0) as c:
            c.call("status")
    return once, (lambda: None)


def measure(targets: dict[str, Path], mode: Callable, calls: int, warmup: int,
            blocks: int) -> dict[str, list[float]]:
    """Latencies in µs per target; targets take turns in blocks of calls // blocks."""
    made = {name: mode(path) for name, path in targets.items()}
    samples: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for call, _ in made.values():
            for _ in range(warmup):
                call()
        per_block = calls // blocks
        for b in range(blocks):
            n = per_block if b < blocks - 1 else calls - per_block * (blocks - 1)
            for name, (call, _) in made.items():
                out = samples[name]
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    call()
                    out.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        for _, close in made.values():
            close()
    return samples


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_us": round(percentile(values, 50), 1), "p99_us": round(percentile(values, 99), 1),
            "min_us": round(min(values), 1), "max_us": round(max(values), 1)}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000, help="timed calls per mode and target (default 1000)")
    p.add_argument("--warmup", type=int, default=50, help="untimed calls first (default 50)")
    p.add_argument("--blocks", type=int, default=10, help="interleaving blocks (default 10)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    with contextlib.ExitStack() as stack:
        echo_dir = Path(tempfile.mkdtemp(prefix="mwbench", dir="/tmp"))
        stack.callback(shutil.rmtree, echo_dir, ignore_errors=True)
        echo_path = echo_dir / "echo.sock"
        echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(echo_path)])
        stack.callback(kill_process, echo)
        daemon = DaemonProcess({"daemon": {"sample_interval": "1s", "log_level": "info"}},
                               workdir=short_tmpdir("mwbench"))
        stack.enter_context(managed(daemon))
        wait_for_socket(echo_path, echo)
        status_bytes = len(json.dumps(daemon.call("status"), separators=(",", ":")))
        targets = {"daemon": daemon.socket_path, "echo": echo_path}
        results: dict[str, Any] = {"calls": args.calls, "warmup": args.warmup, "blocks": args.blocks,
                                   "status_result_bytes": status_bytes}
        for label, mode in (("persistent", persistent), ("per_call", per_call)):
            samples = measure(targets, mode, args.calls, args.warmup, args.blocks)
            results[label] = {name: stats(v) for name, v in samples.items()}

    rows = []
    for label, title in (("persistent", "one connection"), ("per_call", "new connection per call")):
        d, e = results[label]["daemon"], results[label]["echo"]
        for q in ("p50", "p99"):
            key = f"{q}_us"
            rows.append([f"{title}, {q} (µs)", fmt(d[key]), fmt(e[key]), fmt_ratio(ratio(d[key], e[key]))])
        results[label]["ratio_p50"] = round(d["p50_us"] / e["p50_us"], 3)
        results[label]["ratio_p99"] = round(d["p99_us"] / e["p99_us"], 3)
    text = table(["status round trip", "memwardend", "baseline: asyncio line server", "ratio"], rows)
    text += (f"\n\n{args.calls} timed calls per row after {args.warmup} warm-up calls, daemon and baseline "
             f"interleaved in {args.blocks} blocks; client: memwarden.control.client.Client. The `status` "
             f"result is {status_bytes} bytes of JSON, the baseline's 11. Daemon sample_interval 1s, "
             "log_level info.")
    emit("status latency", text, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
