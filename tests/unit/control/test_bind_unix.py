import errno
import grp
import os
import stat

import pytest

from memwarden.control import server
from memwarden.control.server import SocketInUse, bind_unix
from support.daemon import short_tmpdir


def test_binds_0660_and_refuses_a_live_socket():
    path = short_tmpdir() / "control.sock"
    sock = bind_unix(path, "")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with pytest.raises(SocketInUse, match="already listening"):
            bind_unix(path, "")
    finally:
        sock.close()


def test_a_refused_chown_names_the_key_and_the_systemd_way(monkeypatch):
    path = short_tmpdir() / "control.sock"
    group = grp.getgrgid(os.getgid()).gr_name

    def refuse(*args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(server.os, "chown", refuse)
    with pytest.raises(OSError) as caught:
        bind_unix(path, group)
    message = str(caught.value)
    assert "daemon.socket_group" in message and "SocketGroup=" in message and str(path) in message
    assert caught.value.errno == errno.EPERM
