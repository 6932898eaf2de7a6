"""The daemon's peak RSS while a large request body passes its Ollama proxy, against its idle RSS and a 1 MiB body.

memwardend with proxy.enabled in front of the Ollama double (both real processes, loopback). Bodies are made on
the fly by the client (never held in this process either) and sent with http.client:
  blob 1 MiB      POST /api/blobs/sha256:… through the proxy: the baseline;
  blob SIZE       the same with a SIZE body (default 1 GiB): streamed upstream chunk by chunk;
  JSON SIZE       POST /api/generate with a SIZE JSON body, chunked (no Content-Length): refused 413 once
                  proxy.max_request_body (32 MiB) has arrived, the rest read and dropped while the connection
                  lingers.
Before each body the daemon's peak RSS is reset (`5` into /proc/PID/clear_refs) and read back afterwards
(VmHWM); a thread also samples VmRSS every 10 ms, for kernels or users that cannot reset the peak. Each blob
has its own bytes (the double answers an upload of a blob it already has without streaming it) and the double
checks its digest: 201 means every byte arrived intact. Goal (issue 10): growth ≤ 20 MB for 1 GiB.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from _arbitration import GiB, arbitration_world
from _common import MIB, emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, parser, ratio, table

from memwarden.config.schema import ProxyConfig
from memwarden.units import parse_size

MODELS = [{"name": "m:1b", "size": 2 * GiB, "family": "llama", "parameter_size": "1.2B"}]
CHUNK = MIB
GOAL_BYTES = 20 * 1000 * 1000


def vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """The highest VmRSS seen while it runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, vm(self.pid, "VmRSS"))
            self.stop.wait(0.01)


def blocks(size: int, seed: int) -> Iterator[bytes]:
    block = hashlib.sha256(f"memwarden {seed}".encode()).digest() * (CHUNK // 32)
    sent = 0
    i = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        yield (i.to_bytes(8, "big") + block[8:])[:n]
        sent += n
        i += 1


def json_body(size: int) -> Iterator[bytes]:
    head, tail = b'{"model": "m:1b", "stream": false, "prompt": "', b'"}'
    yield head
    for chunk in blocks(size - len(head) - len(tail), 0):
        yield chunk.hex().encode()[:len(chunk)]
    yield tail


def send(port: int, path: str, body: Iterator[bytes], length: int | None) -> tuple[int | str, float]:
    """(status, or the error that ended the exchange; seconds)."""
    headers = {"Content-Type": "application/octet-stream"}
    if length is not None:
        headers["Content-Length"] = str(length)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers=headers)  # no Content-Length: sent chunked
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t0
    except OSError as exc:
        return type(exc).__name__, time.perf_counter() - t0
    finally:
        conn.close()


def measure(pid: int, port: int, label: str, path: str, body: Iterator[bytes], length: int | None,
            size: int) -> dict[str, Any]:
    idle = vm(pid, "VmRSS")
    hwm = reset_peak(pid)
    sampler = Sampler(pid)
    sampler.start()
    try:
        status, seconds = send(port, path, body, length)
    finally:
        sampler.stop.set()
        sampler.join()
    peak = max(sampler.peak, vm(pid, "VmHWM") if hwm else 0)
    return {"label": label, "bytes": size, "status": status, "seconds": round(seconds, 2),
            "mib_per_s": round(size / MIB / seconds, 1) if seconds > 0 else None, "idle_rss": idle,
            "peak_rss": peak, "growth": peak - idle, "peak_from": "VmHWM" if hwm else "VmRSS sampled every 10 ms"}


def blob(pid: int, port: int, size: int, seed: int, label: str) -> dict[str, Any]:
    h = hashlib.sha256()
    for chunk in blocks(size, seed):
        h.update(chunk)
    return measure(pid, port, label, f"/api/blobs/sha256:{h.hexdigest()}", blocks(size, seed), size, size)


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="1GiB", help="the large body (default 1GiB)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    size = parse_size(args.size)

    with arbitration_world(MODELS, [], total_bytes=24 * GiB, proxy=True) as world:
        pid, port = world.daemon.pid, world.proxy_port
        assert port is not None
        blob(pid, port, 64 * 1024, 1, "warm-up")  # the first upload imports and allocates what every one needs
        rows = [blob(pid, port, MIB, 2, "blob 1 MiB (baseline)"),
                blob(pid, port, size, 3, f"blob {args.size}"),
                measure(pid, port, f"JSON {args.size}, chunked, to /api/generate", "/api/generate",
                        json_body(size), None, size)]

    cap = ProxyConfig().max_request_body
    base = rows[0]
    results: dict[str, Any] = {"size": size, "max_request_body": cap, "rows": rows}
    out = []
    for r in rows:
        out.append([r["label"], r["status"], fmt(r["idle_rss"] / MIB), fmt(r["peak_rss"] / MIB),
                    fmt(r["growth"] / MIB), fmt_ratio(ratio(r["peak_rss"], r["idle_rss"])),
                    fmt_ratio(ratio(r["peak_rss"], base["peak_rss"])), fmt(r["mib_per_s"])])
    text = table(["body", "answer", "idle RSS (MiB)", "peak RSS (MiB)", "growth (MiB)", "peak / idle",
                  "peak / 1 MiB body's peak", "MiB/s"], out)
    big = rows[1]
    results["growth_large_blob_bytes"] = big["growth"]
    results["growth_baseline_bytes"] = base["growth"]
    results["goal_growth_le_20mb_met"] = big["growth"] <= GOAL_BYTES and big["status"] == 201
    notes = [f"Goal: the daemon grows by ≤ 20 MB while a {args.size} body passes the proxy: "
             f"{'met' if results['goal_growth_le_20mb_met'] else 'NOT met'} "
             f"({big['growth'] / 1e6:.1f} MB; the 1 MiB baseline grew {base['growth'] / 1e6:.1f} MB).",
             f"Peak read from {big['peak_from']}. The JSON body is refused at proxy.max_request_body "
             f"({cap // MIB} MiB by default): its growth is bounded by that cap, not by the body."]
    emit("proxy body memory", text + "\n\n" + "\n".join(notes), results, args.json)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
