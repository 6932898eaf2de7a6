"""The blocking client: it waits while the daemon's accept queue is full, and reads a refusal that arrived before
its request went out."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from memwarden.control.client import Client, ConnectError
from memwarden.control.protocol import BUSY, RpcError, error_line


@pytest.fixture
def listener() -> Iterator[tuple[Path, socket.socket, list[socket.socket]]]:
    """A unix socket whose accept queue is full (nothing accepts), and the connections that fill it."""
    tmp = Path(tempfile.mkdtemp(prefix="mwcl", dir="/tmp"))
    path = tmp / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    fillers: list[socket.socket] = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            s.close()
            break
        fillers.append(s)
    yield path, server, fillers
    for s in fillers:
        s.close()
    server.close()
    shutil.rmtree(tmp, ignore_errors=True)


def test_connect_waits_while_the_accept_queue_is_full(listener):
    path, server, _ = listener
    accepted: list[socket.socket] = []
    later = threading.Timer(0.3, lambda: accepted.append(server.accept()[0]))  # the daemon gets to it
    later.start()
    try:
        Client(path, timeout=60).close()
    finally:
        later.join()
        for s in accepted:
            s.close()


def test_a_queue_that_stays_full_is_a_clear_error(listener):
    path, _, _ = listener
    with pytest.raises(ConnectError, match="queue of new connections stayed full"):
        Client(path, timeout=0.2)


def test_a_refusal_sent_before_the_request_is_read():
    path = Path(tempfile.mkdtemp(prefix="mwcl", dir="/tmp")) / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        client = Client(path, timeout=10)
        conn, _ = server.accept()
        conn.sendall(error_line(None, RpcError(BUSY, "too many clients: try again")))
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()
        with client, pytest.raises(RpcError) as info:
            client.call("status")
        assert info.value.code == BUSY and "too many clients" in info.value.message
    finally:
        server.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(path.parent)


def _stat(gid: int, mode: int):
    import os
    import stat

    return os.stat_result((stat.S_IFSOCK | mode, 0, 0, 1, 0, gid, 0, 0, 0, 0))


def test_permission_denied_names_the_sockets_group_to_join():
    import grp

    from memwarden.control.client import denied

    group = next(g for g in grp.getgrall() if g.gr_gid != 0)
    said = denied(Path("/run/memwarden/control.sock"), _stat(group.gr_gid, 0o660))
    assert said == (f"permission denied on /run/memwarden/control.sock: the socket belongs to group "
                    f"{group.gr_name}; join it (sudo usermod -aG {group.gr_name} $USER, then log in again)")


def test_permission_denied_on_a_root_group_socket_says_to_set_daemon_socket_group():
    from memwarden.control.client import denied

    said = denied(Path("/run/memwarden/control.sock"), _stat(0, 0o660))
    assert "belongs to group root" in said and "set daemon.socket_group" in said
    assert "join it" not in said


def test_permission_denied_before_the_socket_is_seen_names_its_directory():
    from memwarden.control.client import denied

    assert "its directory /run/memwarden is closed to you" in denied(Path("/run/memwarden/control.sock"), None)
