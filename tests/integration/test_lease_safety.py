"""The GPU ledger never lies: a lease lasts exactly as long as its processes, each process counts once, restored
models are really resident, and only a lease's owner (or root) ends it. Real daemon, sim GPU, Ollama double."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import pwd
import select
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from memwarden.control.protocol import RpcError
from memwarden.gpu import simfile
from support.daemon import BIN
from support.ollama_double import OllamaDouble
from support.ollama_double.manager import gpu_used, sim_gpu, wait_until
from support.other_user import GROUP, open_to_others, run_as_other, spawn_as_other

GiB = 1024**3
BIG, SMALL = "big:latest", "small:latest"
MODELS = [{"name": "big", "size": 6 * GiB, "family": "llama", "parameter_size": "8B"},
          {"name": "small", "size": 3 * GiB, "family": "llama", "parameter_size": "1.5B"}]

# A stand-in trainer: books VRAM in the sim file under its own pid, says so, and waits. With "checkpoint", SIGTERM
# makes it write a mark and keep running (saving a checkpoint) until the test lets it finish.
TRAINER = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    from memwarden.gpu import simfile
    sim, size, marks, mode = pathlib.Path(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4]
    simfile.book(sim, 0, os.getpid(), size)

    def checkpoint(signum, frame):
        (marks / "sigterm").write_text(str(os.getpid()))
        while not (marks / "finish").exists():
            time.sleep(0.05)
        sys.exit(0)

    if mode == "checkpoint":
        signal.signal(signal.SIGTERM, checkpoint)
    (marks / "running").write_text(str(os.getpid()))
    while True:
        signal.pause()
""")


@pytest.fixture
def world(make_daemon):
    made = []

    def start(config=None, models=True):
        d = make_daemon()
        sim = sim_gpu(d.workdir / "gpu.json", 12 * GiB)
        double = OllamaDouble(sim, MODELS, unload_linger=0.5, workdir=d.workdir / "od").start() if models else None
        if double is not None:
            made.append(double)
        sections = {k: dict(v) for k, v in d.sections.items()}
        sections["gpu"] = {"backend": "sim", "sim_file": str(sim), "reserve": "512MiB", "evict_timeout": "20s"}
        sections["ollama"] = {"url": double.url if double else "", "timeout": "5s"}
        for name, values in (config or {}).items():
            sections.setdefault(name, {}).update(values)
        d.write_config(sections)
        d.sections = sections
        d.start()
        return d, double, sim

    yield start
    for double in made:
        double.cleanup()


def wait_resident(d, name):
    wait_until(lambda: any(a["name"] == name and a["resident"] for a in d.call("models.list")), timeout=20,
               message=f"{name} resident in the daemon's view")


def wait_passes(d, n=3):
    """Let the daemon run `n` more sample passes (each one reaps leases whose processes are all gone)."""
    start = d.call("status")["last_sample"]["count"]
    wait_until(lambda: d.call("status")["last_sample"]["count"] >= start + n, timeout=30,
               message=f"{n} sample passes")


def ctl(d, *argv):
    return [str(BIN / "memwardenctl"), "--socket", str(d.socket_path), *argv]


def trainer(sim, size, marks, mode="plain"):
    return [sys.executable, "-c", TRAINER, str(sim), str(size), str(marks), mode]


def kill_tree(proc):
    """Kill a started process and everything below it, whatever groups they moved to."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()


def mark(marks: Path, name: str) -> int:
    return int(wait_until(lambda: (marks / name).exists() and (marks / name).read_text(), timeout=30,
                          message=f"mark {name}"))


# ---- item 2: a lease lasts while its processes run ------------------------------------------------------

def test_a_client_killed_with_sigkill_takes_its_command_down_and_the_lease_lasts_until_it_exits(world, tmp_path):
    d, double, sim = world()
    double.load(BIG)
    wait_resident(d, BIG)
    client = subprocess.Popen(ctl(d, "lease", "6GiB", "--", *trainer(sim, 4 * GiB, tmp_path, "checkpoint")),
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert "evicted big:latest" in client.stderr.readline()
        command = mark(tmp_path, "running")
        [lease] = d.call("lease.list")["active"]
        client.kill()  # SIGKILL: memwardenctl cannot release anything
        client.wait()
        assert mark(tmp_path, "sigterm") == command, "the command got SIGTERM when its client died"
        wait_passes(d)
        assert [x["id"] for x in d.call("lease.list")["active"]] == [lease["id"]], \
            "the lease is held while its command still holds memory"
        assert double.ps() == [], "nothing reloaded onto memory the command still uses"
        assert gpu_used(sim) == 4 * GiB
        (tmp_path / "finish").write_text("")
        wait_until(lambda: d.call("lease.list")["active"] == [], timeout=30, message="the lease reclaimed")
        assert d.call("lease.list")["recent"][0]["release_reason"] == "holder died"
        assert not psutil.pid_exists(command) or psutil.Process(command).status() == psutil.STATUS_ZOMBIE
        wait_until(lambda: [m["name"] for m in double.ps()] == [BIG], timeout=20, message="big restored")
    finally:
        kill_tree(client)


def test_what_the_command_started_keeps_the_lease_after_client_and_command_are_gone(world, tmp_path):
    d, double, sim = world()
    double.load(BIG)
    wait_resident(d, BIG)
    shell = f"{shlex.join(trainer(sim, 4 * GiB, tmp_path))} & wait"
    client = subprocess.Popen(ctl(d, "lease", "6GiB", "--", "sh", "-c", shell), stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    worker = None
    try:
        assert "evicted big:latest" in client.stderr.readline()
        worker = mark(tmp_path, "running")
        command = psutil.Process(worker).ppid()
        client.kill()
        client.wait()
        wait_until(lambda: not psutil.pid_exists(command) or psutil.Process(command).status() == "zombie",
                   timeout=20, message="the command (sh) killed by its client's death")
        wait_passes(d)
        assert len(d.call("lease.list")["active"]) == 1, "the worker the command left still holds the lease"
        assert double.ps() == []
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: d.call("lease.list")["active"] == [], timeout=30, message="the lease reclaimed")
        wait_until(lambda: [m["name"] for m in double.ps()] == [BIG], timeout=20, message="big restored")
    finally:
        if worker is not None and psutil.pid_exists(worker):
            os.kill(worker, signal.SIGKILL)
        kill_tree(client)


def test_the_lease_is_released_only_after_the_command_s_group_is_gone(world, tmp_path):
    """A normal exit: what the command left behind in its group is ended before the lease is released."""
    d, _, sim = world(models=False)
    # The command starts a worker in the background and exits once the worker holds its memory.
    running = shlex.quote(str(tmp_path / "running"))
    shell = (f"{shlex.join(trainer(sim, 2 * GiB, tmp_path))} </dev/null >/dev/null 2>&1 & "
             f"while [ ! -s {running} ]; do sleep 0.05; done; exit 3")
    run = subprocess.run(ctl(d, "lease", "4GiB", "--", "sh", "-c", shell), capture_output=True, text=True,
                         timeout=120)
    worker = mark(tmp_path, "running")
    try:
        assert run.returncode == 3, run.stderr
        assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
        assert d.call("lease.list")["recent"][0]["release_reason"] == "released by holder"
        assert d.call("lease.list")["active"] == []
        assert gpu_used(sim) == 0
    finally:
        if psutil.pid_exists(worker):
            os.kill(worker, signal.SIGKILL)


# ---- item 3: each process counts once, in its innermost lease --------------------------------------------

def test_nested_leases_do_not_overbook_the_gpu(world, tmp_path):
    d, _, sim = world(models=False)
    nested = ctl(d, "lease", "5GiB", "--", *ctl(d, "lease", "5GiB", "--", *trainer(sim, 5 * GiB, tmp_path)))
    outer = subprocess.Popen(nested, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        mark(tmp_path, "running")
        assert gpu_used(sim) == 5 * GiB
        assert len(d.call("lease.list")["active"]) == 2
        # 12 GiB − 0.5 GiB reserve − 5 GiB in use by the inner lease − 5 GiB the outer lease may still take.
        wait_until(lambda: d.call("gpu")["gpus"][0]["used_bytes"] == 5 * GiB, timeout=20, message="a sample")
        assert d.call("gpu")["gpus"][0]["leasable_bytes"] == int(1.5 * GiB)
        with pytest.raises(RpcError) as refused:
            d.call("lease.acquire", {"size": "6GiB", "holder": "third"})
        assert "cannot lease 6.0 GiB" in refused.value.message
    finally:
        kill_tree(outer)


# ---- item 4: restored models are really resident ---------------------------------------------------------

def test_restore_checks_room_for_each_model_and_reports_only_what_stayed(world):
    d, double, sim = world()
    double.load(BIG)
    double.load(SMALL)
    wait_resident(d, BIG)
    wait_resident(d, SMALL)
    granted = d.call("lease.acquire", {"size": "9GiB", "holder": "test"})
    assert sorted(e["name"] for e in granted["evicted"]) == [BIG, SMALL]
    squatter = subprocess.Popen(["sleep", "600"])
    try:
        simfile.book(sim, 0, squatter.pid, int(3.5 * GiB))  # 8.5 GiB free at release: room for one model
        released = d.call("lease.release", {"id": granted["id"]})
        ok = [r["name"] for r in released["restored"] if r["ok"]]
        assert len(ok) == 1
        assert sorted(m["name"] for m in double.ps()) == ok, "every model reported restored is resident"
        [not_restored] = [r for r in released["restored"] if not r["ok"]]
        assert "no room" in not_restored["error"] and f"pid {squatter.pid} sleep" in not_restored["error"]
    finally:
        squatter.kill()
        squatter.wait()


# ---- item 5: ownership ------------------------------------------------------------------------------------

CALL = textwrap.dedent("""
    import json, sys
    from memwarden.control.client import Client
    from memwarden.control.protocol import RpcError
    with Client(sys.argv[1], timeout=30) as c:
        try:
            print(json.dumps({"result": c.call(sys.argv[2], json.loads(sys.argv[3]))}), flush=True)
        except RpcError as exc:
            print(json.dumps({"error": exc.message}), flush=True)
        if len(sys.argv) > 4:
            sys.stdin.read()  # stay alive, the lease's holder, until the test closes stdin
""")


def as_nobody(d, method, params):
    run = run_as_other(CALL, str(d.socket_path), method, json.dumps(params))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_only_the_owner_or_root_ends_a_lease_and_the_holder_pid_is_not_taken_on_trust(world):
    d, _, _ = world(config={"daemon": {"socket_group": GROUP, "admin_group": GROUP}}, models=False)
    open_to_others(d.workdir)
    roots = d.call("lease.acquire", {"size": "1GiB", "holder": "root's trainer", "preemptible": True})

    for method in ("lease.release", "lease.preempt"):
        reply = as_nobody(d, method, {"id": roots["id"]})
        assert "permission denied" in reply["error"] and "belongs to root (uid 0)" in reply["error"], reply
    [still] = d.call("lease.list")["active"]
    assert still["id"] == roots["id"] and still["state"] == "active"

    for pid in (1, d.pid):  # init, and root's daemon: neither is nobody's
        refused = as_nobody(d, "lease.acquire", {"size": "1GiB", "pid": pid})
        assert "'pid' must be the caller's own process" in refused["error"], refused
    with pytest.raises(RpcError) as by_root:
        d.call("lease.acquire", {"size": "1GiB", "pid": 1})
    assert "'pid' must be the caller's own process" in by_root.value.message
    assert len(d.call("lease.list")["active"]) == 1

    nobody = pwd.getpwnam("nobody").pw_uid
    for who in ("nobody", "root"):
        holder = spawn_as_other(CALL, str(d.socket_path), "lease.acquire",
                                json.dumps({"size": "1GiB", "holder": f"nobody's, released by {who}"}), "hold",
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            theirs = json.loads(holder.stdout.readline())["result"]
            assert theirs["uid"] == nobody
            if who == "root":
                released = d.call("lease.release", {"id": theirs["id"]})
            else:  # another process of the same user: the owner
                released = as_nobody(d, "lease.release", {"id": theirs["id"]})["result"]
            assert released["state"] == "released"
        finally:
            holder.stdin.close()
            holder.wait(30)
    d.call("lease.release", {"id": roots["id"]})


# ---- the command at a terminal ----------------------------------------------------------------------------

class Terminal:
    """memwardenctl run as a session leader on a pseudo-terminal, as from a login shell."""

    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(argv[0], argv)
        self.seen = b""

    def expect(self, text: str, timeout: float = 60) -> None:
        def arrived() -> bool:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    self.seen += os.read(self.fd, 4096)
            return text.encode() in self.seen
        wait_until(arrived, timeout=timeout, interval=0, message=lambda: f"{text!r} in {self.seen!r}")

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def state(self) -> str:
        return psutil.Process(self.pid).status()

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


INTERACTIVE = textwrap.dedent("""
    import os
    print("ready", os.getpgrp() == os.tcgetpgrp(0), flush=True)
    while (line := input()) != "quit":
        print("got", line, flush=True)
""")


def test_at_a_terminal_the_command_reads_it_gets_ctrl_c_and_ctrl_z_stops_the_job(world):
    d, _, _ = world(models=False)
    term = Terminal(ctl(d, "lease", "1GiB", "--", sys.executable, "-c", INTERACTIVE))
    try:
        term.expect("ready True")  # the command's own group is the terminal's foreground
        term.type(b"hello\n")
        term.expect("got hello")
        term.type(b"\x1a")  # Ctrl-Z: the command stops, and memwardenctl with it, as a shell's job would
        wait_until(lambda: term.state() == psutil.STATUS_STOPPED, timeout=30, message="memwardenctl stopped")
        assert len(d.call("lease.list")["active"]) == 1
        os.kill(term.pid, signal.SIGCONT)  # `fg`
        term.type(b"again\n")
        term.expect("got again")
        term.type(b"\x03")  # Ctrl-C reaches the command
        assert term.wait() == 130
        assert d.call("lease.list")["active"] == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(term.pid, signal.SIGKILL)
