"""One user must not lock another out of the control socket: `nobody` (a real second uid, via runuser) opens more
connections than it may, idle or trickling bytes, or long-polls and hangs up; root's `status` still answers and
nobody's slots come back."""

from __future__ import annotations

import json
import subprocess

import pytest

from memwarden.control.protocol import BUSY, LINE_TOO_LONG, RpcError
from support.ollama_double.manager import sim_gpu, wait_until
from support.other_user import GROUP, open_to_others, spawn_as_other

GiB = 1024**3

# Run as nobody: open COUNT connections; each asks one request (its first line tells admitted from refused:
# a refused connection is answered at once with BUSY). Then the admitted ones idle, trickle a line one byte at a
# time, or long-poll. Prints one JSON report, then another each time the daemon closes some, until stdin ends.
HOG = r"""
import json, select, socket, sys, time
path, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
slow = int(sys.argv[4]) if len(sys.argv) > 4 else 0
request = sys.argv[5].encode() if len(sys.argv) > 5 else b'{"jsonrpc":"2.0","method":"status","id":1}'
held, refused = [], []
for i in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rb")
    try:
        s.sendall(b'{"jsonrpc":"2.0","method":"status","id":1}\n')
    except OSError:
        pass  # refused and closed already: the refusal is there to read
    reply = json.loads(f.readline())
    if "error" in reply:
        refused.append(reply["error"])
        s.close()
    else:
        held.append((s, f))
if mode == "poll":
    for s, _ in held:
        s.sendall(request + b"\n")
def report(**extra):
    print(json.dumps({"held": len(held), "refused": len(refused), "codes": sorted({e["code"] for e in refused}),
                      "messages": sorted({e["message"] for e in refused}), **extra}), flush=True)
report()
closed = {}
trickling = [s for s, _ in held[:slow]]
while True:
    for s in trickling:
        try:
            s.send(b"{")
        except OSError:
            pass
    readable, _, _ = select.select([sys.stdin] + [s for s, _ in held if s.fileno() not in closed], [], [], 0.5)
    if sys.stdin in readable:
        break
    for i, (s, f) in enumerate(held):
        if s in readable:
            try:
                data = f.readline()
            except OSError:  # closed with our trickled bytes unread: reset after what it said
                data = b""
            kind = "trickled" if i < slow else "idle"
            closed[s.fileno()] = (kind, json.loads(data)["error"]["code"] if data.strip() else None)
            trickling = [t for t in trickling if t is not s]
    if readable:
        report(closed=sorted(closed.values(), key=str))
"""


@pytest.fixture
def shared(make_daemon):
    """A daemon whose socket group lets nobody in; `config` adds [daemon] keys; `sim` gives it a 12 GiB sim
    GPU (and no Ollama)."""
    def start(config=None, sim=False):
        d = make_daemon(config={"daemon": {"socket_group": GROUP, **(config or {})}})
        if sim:
            sim_file = d.workdir / "gpu.json"
            sim_gpu(sim_file, 12 * GiB)
            d.sections["gpu"] = {"backend": "sim", "sim_file": str(sim_file), "reserve": "1GiB"}
            d.write_config(d.sections)
        open_to_others(d.workdir)
        return d.start()
    return start


class Hog:
    def __init__(self, d, count, mode="idle", slow=0, request=""):
        args = [str(d.socket_path), str(count), mode, str(slow)] + ([request] if request else [])
        self.proc = spawn_as_other(HOG, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.first = self.next()

    def next(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"the hog ended: {self.proc.stderr.read()}"
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_nobody_with_600_idle_and_slow_connections_cannot_lock_root_out(shared):
    d = shared()
    hog = Hog(d, 600, slow=100)
    try:
        assert d.call("status")["ready"] is True
        assert hog.first["held"] == 64  # daemon.max_clients_per_user's default
        assert hog.first["refused"] == 536 and hog.first["codes"] == [BUSY]
        assert any("daemon.max_clients_per_user" in m for m in hog.first["messages"])
        assert d.call("diagnostics")["clients"] == 65
    finally:
        hog.stop()


def test_other_users_together_never_take_the_slots_kept_for_root(shared):
    d = shared({"max_clients": 40, "max_clients_per_user": 1000, "reserved_clients": 8})
    hog = Hog(d, 50)
    try:
        assert hog.first["held"] == 32 and hog.first["refused"] == 18
        assert any("daemon.reserved_clients" in m for m in hog.first["messages"])
        clients = [d.client() for _ in range(7)]  # root: the reserve, but for diagnostics' own connection
        try:
            assert [c.call("status")["ready"] for c in clients] == [True] * 7
            assert d.call("diagnostics")["clients"] == 40
        finally:
            for c in clients:
                c.close()
    finally:
        hog.stop()


def test_idle_and_trickling_connections_are_closed(shared):
    d = shared({"client_idle_timeout": "1s", "request_read_timeout": "1s"})
    hog = Hog(d, 10, slow=4)
    try:
        assert hog.first["held"] == 10
        report = hog.first
        while len(report.get("closed", [])) < 10:
            report = hog.next()
        assert sorted(map(tuple, report["closed"])) == [("idle", None)] * 6 + [("trickled", LINE_TOO_LONG)] * 4
        wait_until(lambda: d.call("diagnostics")["clients"] == 1, timeout=30, message="slots freed")
    finally:
        hog.stop()


def cancelled(d, method: str) -> int:
    return sum(e.get("event") == "control request cancelled: the client hung up" and e.get("method") == method
               for e in d.log_events())


def test_long_polls_of_a_client_that_hung_up_free_their_slots(shared):
    d = shared(sim=True)
    lease = d.call("lease.acquire", {"size": "2GiB", "holder": "trainer"})
    watch = json.dumps({"jsonrpc": "2.0", "method": "lease.watch", "params": {"id": lease["id"], "timeout": 3600},
                        "id": 1})
    hog = Hog(d, 64, mode="poll", request=watch)
    try:
        assert hog.first["held"] == 64 and hog.first["refused"] == 0
        wait_until(lambda: d.call("diagnostics")["clients"] == 65, timeout=30, message="64 long-polls")
        hog.stop()  # the process exits: every one of its connections hangs up at once
        wait_until(lambda: d.call("diagnostics")["clients"] == 1, timeout=30,
                   message="the long-polls of a client that is gone were cancelled")
        wait_until(lambda: cancelled(d, "lease.watch") == 64, timeout=30, message="64 cancellations logged")
    finally:
        hog.stop()
    again = Hog(d, 64, mode="poll", request=watch)
    try:
        assert again.first["held"] == 64  # nobody's quota is whole again
        assert d.call("lease.list")["active"][0]["id"] == lease["id"]
    finally:
        again.stop()


def test_a_reload_applies_new_limits_to_new_connections(shared):
    d = shared({"max_clients": 3, "reserved_clients": 1})
    held = [d.client() for _ in range(3)]
    try:
        with pytest.raises(RpcError) as info:
            d.call("status")
        assert info.value.code == BUSY and "daemon.max_clients" in info.value.message
        d.sections["daemon"].update(max_clients=6)
        d.write_config(d.sections)
        assert held[0].call("config.reload")["changed"] == ["daemon.max_clients"]
        assert d.call("status")["ready"] is True
    finally:
        for c in held:
            c.close()
