"""Expected endings a person meets at the command line, each without a traceback: a reader that stops early
(`| head`), Ctrl-C while a lease waits, a second daemon on a socket in use, init-demo without the train extra,
a socket that answers something other than memwardend."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from memwarden.cli.usage import EX_INTERRUPTED, EX_READER_GONE
from support.daemon import BIN, toml
from support.ollama_double.manager import sim_gpu, wait_until

GiB = 1024**3


def closed_pipe() -> int:
    """The writing end of a pipe whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    return write


def assert_quiet(done: subprocess.CompletedProcess | subprocess.Popen, stderr: str, code: int) -> None:
    assert done.returncode == code, stderr
    assert stderr == "", stderr


def test_a_reader_gone_before_the_first_write_ends_memwardend_quietly():
    out = closed_pipe()
    try:
        done = subprocess.run([BIN / "memwardend", "--print-default-config"], stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(out)
    assert_quiet(done, done.stderr, EX_READER_GONE)


def test_a_reader_that_stops_early_ends_memwardenctl_quietly(make_daemon):
    d = make_daemon().start()
    with d.client() as c:
        for i in range(100):  # about 500 KB of JSON: far more than a pipe holds
            c.call("memories.add", {"profile": "bob", "kind": "journal", "importance": 1,
                                    "content": f"memory {i} " + "x" * 5000})
    ctl = subprocess.Popen([BIN / "memwardenctl", "--socket", d.socket_path, "--json", "memories", "list",
                            "--limit", "100"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert ctl.stdout.readline().strip() == b"{"  # `| head -1`
    ctl.stdout.close()
    stderr = ctl.stderr.read().decode()
    ctl.wait(60)
    assert_quiet(ctl, stderr, EX_READER_GONE)
    # The daemon is not the one that broke: it answers the next client.
    assert d.call("status")["pid"] == d.pid


def test_ctrl_c_while_a_lease_waits_for_room_ends_without_a_traceback(make_daemon):
    d = make_daemon()
    sim = sim_gpu(d.workdir / "gpu.json", 12 * GiB)
    d.write_config({**d.sections, "gpu": {"backend": "sim", "sim_file": str(sim), "reserve": "1GiB"}})
    d.start()
    held = d.call("lease.acquire", {"size": "10GiB", "holder": "test"})
    # Ctrl-C as a terminal delivers it, whatever this run inherited: a job started with `&` by a
    # non-interactive shell ignores SIGINT, and so would the client.
    ctl = subprocess.Popen([BIN / "memwardenctl", "--socket", d.socket_path, "lease", "8GiB", "--wait", "10m",
                            "--", "true"], stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Its request is in: the daemon counts its connection next to the one asking.
        wait_until(lambda: d.call("diagnostics")["clients"] >= 2, timeout=60, message="the lease request")
        ctl.send_signal(signal.SIGINT)
        stderr = ctl.stderr.read()
        ctl.wait(60)
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
    assert ctl.returncode == EX_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    d.call("lease.release", {"id": held["id"]})


def test_a_second_memwardend_on_a_socket_in_use_says_so_in_one_line_before_touching_any_state(make_daemon):
    first = make_daemon().start()
    blocker = first.workdir / "a-file"
    blocker.write_text("")
    # Its state could not even be opened (a file stands where a directory must): the refusal comes first.
    second = {**first.sections, "daemon": {**first.sections["daemon"], "state_dir": str(blocker / "state")}}
    config = first.workdir / "second.toml"
    config.write_text(toml(second))
    done = subprocess.run([BIN / "memwardend", "--config", config, "--log-format", "console"], capture_output=True,
                          text=True, timeout=120,
                          env={k: v for k, v in first.environment().items() if k != "NOTIFY_SOCKET"})
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 73, output
    assert output.count("\n") == 0, output
    assert f"another memwardend is already listening on {first.socket_path}" in output
    assert "Traceback" not in output
    assert first.call("status")["pid"] == first.pid


def test_init_demo_without_the_train_extra_says_which_command_installs_it(tmp_path):
    unimportable = tmp_path / "no-train-extra"
    (unimportable / "torch").mkdir(parents=True)
    (unimportable / "torch" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(unimportable),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([BIN / "memwardenctl", "model", "init-demo", tmp_path / "base"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "install it with: sudo memwardenctl setup training" in done.stderr
    assert "No module named 'torch'" in done.stderr
    assert not (tmp_path / "base").exists()


@pytest.mark.parametrize("command", [["status"], ["lease", "1GiB", "--", "true"]], ids=["status", "lease"])
def test_a_socket_that_answers_something_else_is_one_line_not_a_traceback(tmp_path, command):
    path = tmp_path / "other.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer_junk() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"220 welcome to something else\n")

    thread = threading.Thread(target=answer_junk, daemon=True)
    thread.start()
    try:
        done = subprocess.run([BIN / "memwardenctl", "--socket", path, *command], capture_output=True, text=True,
                              timeout=60)
    finally:
        thread.join(10)
        server.close()
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{path} answered something that is not memwardend's JSON-RPC" in done.stderr


@pytest.mark.parametrize("command", [["status"], ["lease", "1GiB", "--", "true"]], ids=["status", "lease"])
def test_a_socket_path_too_long_for_unix_sockets_is_one_line(tmp_path, command):
    path = tmp_path / ("x" * 120) / "control.sock"
    done = subprocess.run([BIN / "memwardenctl", "--socket", path, *command], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("content, stdin, where", [("-", b"caf\xe9\n", "stdin"), (b"caf\xe9", b"", "an argument")],
                         ids=["stdin", "argument"])
def test_memory_content_that_is_not_utf8_is_a_usage_error(tmp_path, content, stdin, where):
    done = subprocess.run([BIN / "memwardenctl", "--socket", tmp_path / "none.sock", "memories", "add", "--profile",
                           "p", "--kind", "journal", "--importance", "3", content], input=stdin,
                          capture_output=True, timeout=60)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert stderr.count("\n") == 1 and f"{where} is not UTF-8 text" in stderr, stderr


def test_usage_errors_of_the_installed_command_are_one_line_with_exit_2(tmp_path: Path):
    for argv in (["lease", "1GiB", "--wait", "5s"], ["lease", "--bogus", "1GiB", "--", "true"], ["nosuch"]):
        done = subprocess.run([BIN / "memwardenctl", "--socket", tmp_path / "none.sock", *argv], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.count("\n") == 1, (argv, done.stderr)
