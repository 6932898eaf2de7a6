"""Where memwardend puts its socket and state, against the real daemon: what it refuses, in one line, and why.

- Only a stale socket at the socket path is replaced; a file, a directory or a symlink there is left alone and
  the start refused (exit 73).
- The socket's directory must be the daemon's uid's (or root's) and writable by no one else: a runtime directory
  another user made first is refused (exit 77), and memwardenctl will not talk to a socket in it.
- A state or socket directory the daemon cannot write is named with the reason (exit 73).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import BIN, DaemonProcess, short_tmpdir
from support.ollama_double.manager import wait_until
from support.other_user import USER, open_to_others, run_as_other, spawn_as_other

EX_CANTCREAT, EX_NOPERM = 73, 77
MEMWARDEND = "import sys; from memwarden.cli.memwardend import main; sys.exit(main(sys.argv[1:]))"


def refused(out: str, code: int, returncode: int) -> str:
    """The one error line of a start that was refused with `code`: its message."""
    assert returncode == code, out
    assert "Traceback" not in out, out
    errors = [json.loads(line) for line in out.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, out
    return errors[0]["error"]


def start_refused(d: DaemonProcess, code: int) -> str:
    """Start the daemon, which must exit (not become ready) with `code`; returns its one error message."""
    earlier = len(d.notify.messages)  # from a run of the same daemon before
    d.start(wait_ready=False)
    wait_until(lambda: d.proc.poll() is not None or any(m.get("READY") == "1" for m in d.notify.messages[earlier:]),
               timeout=60, message="memwardend to exit or become ready")
    assert d.proc.poll() is not None, f"memwardend started:\n{d.log()}"
    d.stop()
    return refused(d.log(), code, d.proc.returncode)


def start_as_other_refused(d: DaemonProcess, code: int) -> str:
    open_to_others(d.workdir)
    d.config_path.chmod(0o644)
    run = run_as_other(MEMWARDEND, "--config", str(d.config_path))
    return refused(run.stderr + run.stdout, code, run.returncode)


def stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


# ---- what is at the socket path ---------------------------------------------------------------------------------

def test_a_regular_file_at_the_socket_path_survives_and_the_start_is_refused(make_daemon):
    d = make_daemon()
    d.socket_path.write_text("precious")
    message = start_refused(d, EX_CANTCREAT)
    assert message.startswith(f"{d.socket_path} is a regular file, not a socket"), message
    assert "daemon.socket" in message
    assert d.socket_path.read_text() == "precious"


@pytest.mark.parametrize("what", ["directory", "symlink to a file", "symlink to a stale socket"])
def test_a_directory_or_a_symlink_at_the_socket_path_is_left_alone(make_daemon, what):
    d = make_daemon()
    target = d.workdir / "elsewhere"
    if what == "directory":
        d.socket_path.mkdir()
        (d.socket_path / "inside").write_text("kept")
    else:
        if what == "symlink to a file":
            target.write_text("precious")
        else:
            stale_socket(target)
        d.socket_path.symlink_to(target)
    message = start_refused(d, EX_CANTCREAT)
    assert message.startswith(f"{d.socket_path} is a "), message
    if what == "directory":
        assert "is a directory, not a socket" in message and (d.socket_path / "inside").read_text() == "kept"
    else:
        assert f"is a symbolic link to {target}, not a socket" in message
        assert d.socket_path.is_symlink() and target.exists()  # neither the link nor what it points to removed


def test_a_stale_socket_is_replaced_and_the_daemon_serves_on_it(make_daemon):
    d = make_daemon()
    stale_socket(d.socket_path)  # what a daemon killed with -9 leaves behind
    d.start()
    assert d.call("status")["ready"] is True
    assert d.stop() == 0


# ---- a runtime directory another user made first -----------------------------------------------------------------

CAPTURE = r"""
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(16)
print("listening", flush=True)
with open(log, "ab", buffering=0) as out:
    while True:
        conn, _ = srv.accept()
        line = conn.makefile("rb").readline()
        out.write(line)
        conn.close()
        if line == b"STOP\n":
            break
"""


@contextlib.contextmanager
def capturing_socket(path: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`nobody` listening at `path`, writing every line it is sent to `log`, until it is sent STOP."""
    proc = spawn_as_other(CAPTURE, str(path), str(log), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "listening"
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stop:
                stop.connect(str(path))
                stop.sendall(b"STOP\n")
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def sticky_base() -> Iterator[Path]:
    """A sticky, world-writable directory like /tmp, where anyone may create a directory first."""
    base = short_tmpdir()
    base.chmod(0o1777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def made_by_other(runtime: Path) -> None:
    made = run_as_other("import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o777)", str(runtime))
    assert made.returncode == 0, made.stderr


def test_a_runtime_dir_another_user_made_first_is_refused(make_daemon, sticky_base):
    runtime = sticky_base / "memwarden-0"  # as /tmp/memwarden-UID would be, without XDG_RUNTIME_DIR
    made_by_other(runtime)
    sock = runtime / "control.sock"
    d = make_daemon(config={"daemon": {"socket": str(sock)}})
    message = start_refused(d, EX_NOPERM)
    assert message.startswith(f"{runtime} is owned by another user (owner {USER}, "), message
    assert "mode 0777" in message and "daemon.socket" in message
    assert list(runtime.iterdir()) == []  # nothing of the daemon's went into it


def test_memwardenctl_sends_nothing_to_a_socket_in_another_users_directory(sticky_base):
    runtime = sticky_base / "memwarden-0"
    made_by_other(runtime)
    sock = runtime / "control.sock"
    captured = runtime / "captured"
    with capturing_socket(sock, captured):
        run = subprocess.run([BIN / "memwardenctl", "--socket", str(sock), "memories", "add", "--profile", "alice",
                              "--kind", "journal", "--importance", "5", "the safe's code is 4711"],
                             capture_output=True, text=True, timeout=60)
    assert captured.read_bytes() == b"STOP\n"  # only the test's own stop line reached the listener
    assert run.returncode == 3, run
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"memwardenctl: refusing to talk to {sock}: ")
    assert f"{runtime} is owned by another user" in run.stderr


# ---- directories the daemon cannot write --------------------------------------------------------------------------

@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` bind-mounted read-only onto itself; skips where this machine may not mount."""
    run = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        pytest.skip(f"cannot bind-mount here (no CAP_SYS_ADMIN?): {run.stderr.strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True, text=True,
                            check=False)
        assert ro.returncode == 0, ro.stderr
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.mark.parametrize("contents", ["empty", "with a database"])
def test_a_read_only_state_dir_is_named_as_read_only(make_daemon, contents):
    d = make_daemon()
    state = d.workdir / "state"
    if contents == "empty":
        state.mkdir()
    else:
        d.start()
        d.call("memories.add", {"profile": "alice", "kind": "journal", "content": "kept", "importance": 3})
        assert d.stop() == 0
    with read_only(state):
        message = start_refused(d, EX_CANTCREAT)
    assert message.startswith(f"{state} is on a read-only filesystem: remount it read-write, or set "
                              f"daemon.state_dir"), message
    assert "is it a memwarden state database" not in message


def test_a_state_dir_not_writable_by_the_daemons_uid_is_named_with_the_uid(make_daemon):
    d = make_daemon()
    state = d.workdir / "state"
    state.mkdir(mode=0o755)  # root's
    message = start_as_other_refused(d, EX_CANTCREAT)
    assert message.startswith(f"{state} is not writable by {USER} (uid 65534) (owner root, "), message
    assert "make it writable for uid 65534, or set daemon.state_dir" in message


def test_a_state_dir_that_cannot_be_created_names_the_directory_in_the_way(make_daemon):
    d = make_daemon()
    parent = d.workdir / "var"
    parent.mkdir(mode=0o755)
    d.write_config({**d.sections, "daemon": {**d.sections["daemon"], "state_dir": str(parent / "lib" / "state")}})
    message = start_as_other_refused(d, EX_CANTCREAT)
    assert message.startswith(f"cannot create {parent}/lib/state: {parent} is not writable by {USER}"), message


def test_a_socket_dir_not_writable_by_the_daemons_uid_is_named(make_daemon):
    d = make_daemon()
    state = d.workdir / "state"
    state.mkdir()
    run_dir = d.workdir / "run"
    run_dir.mkdir(mode=0o755)  # root's, so trusted, but nobody may not create the socket in it
    d.write_config({**d.sections, "daemon": {**d.sections["daemon"], "socket": str(run_dir / "control.sock")}})
    subprocess.run(["chown", f"{USER}:", str(state)], check=True)
    message = start_as_other_refused(d, EX_CANTCREAT)
    assert message.startswith(f"{run_dir} is not writable by {USER} (uid 65534)"), message
    assert "daemon.socket" in message
