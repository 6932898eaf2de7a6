import errno
import grp
import os
import socket
import stat

import pytest

from memwarden.control import listen
from memwarden.control.listen import SocketInUse, SocketPathTaken, bind_unix
from memwarden.dirs import UnsafeDirectory
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

    monkeypatch.setattr(listen.os, "chown", refuse)
    with pytest.raises(OSError) as caught:
        bind_unix(path, group)
    message = str(caught.value)
    assert "daemon.socket_group" in message and "SocketGroup=" in message and str(path) in message
    assert caught.value.errno == errno.EPERM


def stale_socket(path) -> None:
    """A socket file nobody listens on: what a daemon killed with -9 leaves behind."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def test_a_stale_socket_is_replaced():
    path = short_tmpdir() / "control.sock"
    stale_socket(path)
    sock = bind_unix(path, "")
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))  # the path now leads to the new listener
        client.close()
    finally:
        sock.close()


def test_a_regular_file_at_the_socket_path_is_left_alone_and_named():
    path = short_tmpdir() / "control.sock"
    path.write_text("precious")
    with pytest.raises(SocketPathTaken) as caught:
        bind_unix(path, "")
    assert str(caught.value).startswith(f"{path} is a regular file, not a socket")
    assert "\n" not in str(caught.value)
    assert path.read_text() == "precious"


def test_a_directory_at_the_socket_path_is_left_alone_and_named():
    path = short_tmpdir() / "control.sock"
    path.mkdir()
    (path / "inside").write_text("kept")
    with pytest.raises(SocketPathTaken, match="is a directory, not a socket"):
        bind_unix(path, "")
    assert (path / "inside").read_text() == "kept"


@pytest.mark.parametrize("target_kind", ["file", "stale socket", "live socket"])
def test_a_symlink_at_the_socket_path_is_refused_and_not_followed(target_kind):
    work = short_tmpdir()
    target, path = work / "elsewhere", work / "control.sock"
    live = None
    if target_kind == "file":
        target.write_text("precious")
    elif target_kind == "stale socket":
        stale_socket(target)
    else:
        live = bind_unix(target, "")
    path.symlink_to(target)
    try:
        with pytest.raises(SocketPathTaken, match=f"is a symbolic link to {target}, not a socket"):
            bind_unix(path, "")
        assert path.is_symlink() and os.path.lexists(target)
        if target_kind == "file":
            assert target.read_text() == "precious"
    finally:
        if live is not None:
            live.close()


def test_a_socket_dir_others_may_write_is_refused_before_anything_in_it_is_touched():
    work = short_tmpdir()
    work.chmod(0o777)
    path = work / "control.sock"
    path.write_text("someone else's")
    with pytest.raises(UnsafeDirectory, match=f"^{work} is writable by its group or by others"):
        bind_unix(path, "")
    assert path.read_text() == "someone else's"
