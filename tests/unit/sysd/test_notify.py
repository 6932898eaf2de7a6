import os
import socket
import time

import pytest

from memwarden.sysd.notify import Notifier, _watchdog_usec


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A bound AF_UNIX datagram socket standing in for systemd; the process env has no NOTIFY_SOCKET."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


def recv_bytes(sock) -> bytes:
    try:
        return sock.recv(65536)
    except TimeoutError:
        pytest.fail("no notification arrived on NOTIFY_SOCKET")


def recv(sock) -> str:
    return recv_bytes(sock).decode()


def notifier(path, **env) -> Notifier:
    return Notifier({"NOTIFY_SOCKET": str(path), **env})


def test_disabled_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier({})
    assert n.enabled is False
    n.ready("x")
    n.status("x")
    n.watchdog()
    n.reloading()
    n.stopping()


def test_enabled_with_notify_socket(notify_socket):
    path, _ = notify_socket
    assert notifier(path).enabled is True


def test_ready_sends_ready_and_status(notify_socket):
    path, sock = notify_socket
    notifier(path).ready("RAM 50% used")
    assert recv(sock) == "READY=1\nSTATUS=RAM 50% used"


def test_status(notify_socket):
    path, sock = notify_socket
    notifier(path).status("1 alert")
    assert recv(sock) == "STATUS=1 alert"


def test_status_is_utf8(notify_socket):
    # systemd ignores a STATUS= that is not valid UTF-8.
    path, sock = notify_socket
    notifier(path).status("café ✓")
    assert recv_bytes(sock) == "STATUS=café ✓".encode()


def test_watchdog_only_when_watchdog_usec_set(notify_socket):
    path, sock = notify_socket
    silent = notifier(path)
    assert silent.watchdog_usec is None
    silent.watchdog()
    silent.status("marker")
    assert recv(sock) == "STATUS=marker"  # nothing was sent before the marker

    pinging = notifier(path, WATCHDOG_USEC="20000000")
    assert pinging.watchdog_usec == 20_000_000
    pinging.watchdog()
    assert recv(sock) == "WATCHDOG=1"


def test_reloading_carries_monotonic_usec(notify_socket):
    path, sock = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier(path).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = recv(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[2] == "STATUS=reloading configuration"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_stopping(notify_socket):
    path, sock = notify_socket
    notifier(path).stopping()
    assert recv(sock) == "STOPPING=1\nSTATUS=stopping"


def test_process_environment_is_used_by_default(notify_socket, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    assert n.enabled
    n.status("from os.environ")
    assert recv(sock) == "STATUS=from os.environ"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30_000_000),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}, None),  # for another process
    ],
)
def test_watchdog_usec(env, expected):
    assert _watchdog_usec(env) == expected


def test_watchdog_usec_for_our_pid():
    assert _watchdog_usec({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid())}) == 1000
