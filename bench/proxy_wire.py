"""What crosses loopback for one /api/generate through each hop of bench/proxy_latency.py, read from the packets.

The same world as proxy_latency.py (the Ollama double with one resident model, memwardend with its proxy, the bare
Protocol relay, memwarden's proxy alone), one target at a time, one persistent http.client connection in a child
process, while a raw packet socket on `lo` records every TCP segment with the kernel's timestamp (root only). Per
request, medians over the requests:
  segments      how many segments carried bytes: the client's request, the double's answer, the hop's answer;
  head lead     how long the answer's head reached the client (or the hop, from the double) before the first
                byte of its body: a lead is time the client can spend parsing the head before its first line;
  hop legs      µs from the client's last request segment to the hop's request upstream, and from the double's
                first body segment to the hop's first body segment to the client; between them, the double's own
                µs from the request to its first body segment.
Counts and the order of segments do not change with the machine's load; the µs do, and are reported beside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
from typing import Any

from _common import cpu_pressure, emit, exit_cleanly_on_sigterm, fmt, parser, table
from _forwarders import PROTOCOL_RELAY, PROXY_ALONE
from proxy_latency import LABELS, MODEL, PROMPT, hop_world, start_forwarder

SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4  # on lo each segment is seen going out and coming in: the first is kept

# The client: `python -c CLIENT PORT STREAM N`; prints [[start, end], ...] in µs of the wall clock (the packets'
# clock), end being the first NDJSON line (streamed) or the whole answer.
CLIENT = r"""
import json, sys, time
from http.client import HTTPConnection
port, stream, n = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
body = json.dumps({"model": sys.argv[4], "prompt": sys.argv[5], "stream": stream}).encode()
conn, times = HTTPConnection("127.0.0.1", port, timeout=30), []
for _ in range(n):
    t0 = time.time_ns()
    conn.request("POST", "/api/generate", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if stream:
        resp.readline()
        t1 = time.time_ns()
        resp.read()
    else:
        resp.read()
        t1 = time.time_ns()
    times.append((t0 / 1000, t1 / 1000))
print(json.dumps(times))
"""


class Capture:
    """TCP segments on lo as (µs, source port, destination port, payload bytes, first bytes), while running."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self.sock.bind(("lo", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.sock.settimeout(0.1)
        self.raw: list[tuple[bytes, bytes]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, anc, _, addr = self.sock.recvmsg(600, 64)
            except TimeoutError:
                continue
            if addr[2] == PACKET_OUTGOING and anc:
                self.raw.append((data, anc[0][2]))

    def segments(self) -> list[tuple[float, int, int, int, bytes]]:
        self.stop.set()
        self.thread.join()
        self.sock.close()
        out = []
        for data, stamp in self.raw:
            sec, ns = struct.unpack("qq", stamp[:16])
            ip = data[14:]
            if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
                continue
            ihl, total = (ip[0] & 15) * 4, struct.unpack("!H", ip[2:4])[0]
            tcp = ip[ihl:]
            src, dst = struct.unpack("!HH", tcp[:4])
            off = (tcp[12] >> 4) * 4
            if total - ihl - off > 0:
                out.append((sec * 1e6 + ns / 1e3, src, dst, total - ihl - off, bytes(tcp[off:off + 400])))
        return sorted(out)


def body_starts(payload: bytes, size: int) -> bool:
    """Whether a segment carries body bytes: anything but a head alone."""
    if not payload.startswith(b"HTTP/1."):
        return True
    end = payload.find(b"\r\n\r\n")
    return end < 0 or size > end + 4


def per_request(segments: list[tuple[float, int, int, int, bytes]], times: list[list[float]], front: int,
                double: int) -> list[dict[str, float]]:
    """Each request's events, read from the segments between its start and the next request's."""
    rows = []
    starts = [t[0] for t in times] + [float("inf")]
    for i, (t0, t1) in enumerate(times):
        window = [s for s in segments if t0 <= s[0] < starts[i + 1]]
        client = next((s[1] for s in window if s[2] == front and s[4].startswith(b"POST")), None)
        up = client if front == double else \
            next((s[1] for s in window if s[2] == double and s[4].startswith(b"POST")), None)
        if client is None or up is None:
            continue
        to_front = [s for s in window if s[1] == client and s[2] == front]
        upstream_request = to_front[-1] if front == double else next(s for s in window if s[1] == up and s[2] == double)
        from_double = [s for s in window if s[1] == double and s[2] == up]
        to_client = [s for s in window if s[1] == front and s[2] == client]
        if not (from_double and to_client):
            continue
        d_head = next((s for s in from_double if s[4].startswith(b"HTTP/1.")), None)
        d_body = next((s for s in from_double if body_starts(s[4], s[3])), None)
        c_head = next((s for s in to_client if s[4].startswith(b"HTTP/1.")), None)
        c_body = next((s for s in to_client if body_starts(s[4], s[3])), None)
        if None in (d_head, d_body, c_head, c_body):
            continue
        rows.append({"client_segments": len(to_front), "double_segments": len(from_double),
                     "hop_segments": len(to_client), "double_head_lead_us": d_body[0] - d_head[0],
                     "client_head_lead_us": c_body[0] - c_head[0],
                     "request_leg_us": upstream_request[0] - to_front[-1][0],
                     "double_us": d_body[0] - upstream_request[0], "answer_leg_us": c_body[0] - d_body[0],
                     "first_byte_to_end_us": t1 - c_body[0]})
    return rows


def measure(port: int, front: int, double: int, stream: bool, n: int, warmup: int) -> dict[str, Any]:
    args = [sys.executable, "-c", CLIENT, str(port), "1" if stream else "0"]
    subprocess.run([*args, str(warmup), MODEL, PROMPT], check=True, capture_output=True)
    capture = Capture()
    try:
        out = subprocess.run([*args, str(n), MODEL, PROMPT], check=True, capture_output=True, text=True).stdout
    finally:
        segments = capture.segments()
    rows = per_request(segments, json.loads(out), front, double)
    if not rows:
        return {"n": 0}
    return {"n": len(rows), **{k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]}}


COLUMNS = (("client_segments", "client segs"), ("double_segments", "double segs"), ("hop_segments", "hop segs"),
           ("double_head_lead_us", "double's head lead (µs)"), ("client_head_lead_us", "head lead at client (µs)"),
           ("request_leg_us", "hop request leg (µs)"), ("double_us", "double: request → first body byte (µs)"),
           ("answer_leg_us", "hop answer leg (µs)"),
           ("first_byte_to_end_us", "client: body's first segment → done (µs)"))


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300, help="timed requests per target and mode (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed requests first, on a connection of their own")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    if os.geteuid() != 0:
        why = "the packets on lo are read with a raw socket, which needs root"
        emit("proxy wire", f"Skipped: {why}\n", {"skipped": why}, args.json)
        return 0
    results: dict[str, Any] = {"requests": args.requests, "warmup": args.warmup}
    with contextlib.ExitStack() as stack:
        world = hop_world(stack)
        pids: dict[str, int] = {}
        double = world.double.port
        targets = {"direct": double, "memwarden": world.proxy_port,
                   "protocol_relay": start_forwarder("protocol_relay", PROTOCOL_RELAY, str(double), stack, pids),
                   "proxy_alone": start_forwarder("proxy_alone", PROXY_ALONE, world.double.url, stack, pids)}
        for mode, stream in (("generate", False), ("ttfc", True)):
            results[mode] = {name: measure(port, port, double, stream, args.requests, args.warmup)
                             for name, port in targets.items()}
    sections = (("generate", "/api/generate, stream:false"), ("ttfc", "/api/generate, stream:true"))
    text = "\n\n".join(table([title, *(c[1] for c in COLUMNS), "n"],
                             [[LABELS[name], *(fmt(r.get(k)) for k, _ in COLUMNS), r["n"]]
                              for name, r in results[mode].items()]) for mode, title in sections)
    results["cpu_pressure_some_avg60"] = pressure = cpu_pressure()
    text += (f"\n\nMedians per request. CPU pressure at the end (/proc/pressure/cpu some avg60): {pressure}: the µs "
             "columns move with it, the segment counts and which segment carries the head do not.")
    emit("proxy wire", text, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
