"""Which directories memwarden trusts with its socket and state (memwarden.dirs), on real directories."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from memwarden import dirs
from memwarden.dirs import UnsafeDirectory, Unwritable, check_socket, check_trusted, unsafe_reason

ME = os.geteuid()
OTHER = 65534  # nobody
needs_root = pytest.mark.skipif(ME != 0, reason="giving a directory to another uid needs root (chown)")


def lstat_of(mode: int, uid: int = ME) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize("mode, uid, last, reason", [
    (stat.S_IFDIR | 0o755, ME, True, None),
    (stat.S_IFDIR | 0o700, ME, True, None),
    (stat.S_IFDIR | 0o711, 0, True, None),
    (stat.S_IFDIR | 0o777, ME, True, "writable by its group or by others"),
    (stat.S_IFDIR | 0o775, ME, True, "writable by its group or by others"),
    (stat.S_IFDIR | 0o1777, 0, True, "writable by its group or by others"),  # /tmp itself is no runtime dir
    (stat.S_IFDIR | 0o1777, 0, False, None),  # ... but fine on the way to one
    (stat.S_IFDIR | 0o777, 0, False, "writable by its group or by others and not sticky"),
    (stat.S_IFDIR | 0o755, OTHER, True, "owned by another user"),
    (stat.S_IFDIR | 0o755, OTHER, False, "owned by another user"),
    (stat.S_IFLNK | 0o777, OTHER, False, "symbolic link owned by another user"),
    (stat.S_IFLNK | 0o777, 0, False, None),
    (stat.S_IFREG | 0o644, ME, True, "not a directory"),
])
def test_unsafe_reason_decides_on_one_step(mode, uid, last, reason):
    got = unsafe_reason(lstat_of(mode, uid), {0, ME}, last=last)
    assert (got is None) if reason is None else (reason in got), got


def test_walk_meets_every_step_and_every_symlink_on_the_way(tmp_path):
    (tmp_path / "real" / "run").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "real" / "back").symlink_to("run")
    steps = [p for p, _ in dirs.walk(tmp_path / "link" / "back")]
    assert steps[0] == Path("/")
    assert steps[-4:] == [tmp_path / "link", tmp_path / "real", tmp_path / "real" / "back",
                          tmp_path / "real" / "run"]


def test_walk_stops_a_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError) as caught:
        list(dirs.walk(tmp_path / "a"))
    assert caught.value.errno == errno.ELOOP


def test_a_world_writable_runtime_dir_is_refused_in_one_line_naming_it(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    runtime = base / "memwarden-1000"
    runtime.mkdir()
    runtime.chmod(0o777)
    with pytest.raises(UnsafeDirectory) as caught:
        dirs.ensure_private_dir(runtime, "set daemon.socket")
    message = str(caught.value)
    assert message.startswith(f"{runtime} is writable by its group or by others")
    assert "mode 0777" in message and "set daemon.socket" in message and "\n" not in message


def test_a_sticky_parent_like_tmp_is_fine_and_a_missing_runtime_dir_is_made_0755(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o1777)
    runtime = base / "memwarden-1000"
    dirs.ensure_private_dir(runtime, "set daemon.socket")
    st = os.stat(runtime)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == ME


def test_a_group_writable_parent_that_is_not_sticky_is_refused_as_on_the_way(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o775)
    with pytest.raises(UnsafeDirectory, match="^" + re.escape(f"{base} (on the way to {base}/run) is writable")):
        dirs.ensure_private_dir(base / "run", "set daemon.socket")


@needs_root
def test_a_runtime_dir_owned_by_another_user_is_refused_even_when_private(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o1777)
    runtime = base / "memwarden-0"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, OTHER, OTHER)
    with pytest.raises(UnsafeDirectory) as caught:
        dirs.ensure_private_dir(runtime, "set daemon.socket")
    assert f"{runtime} is owned by another user" in str(caught.value)
    assert f"owner {dirs.user_name(OTHER)}" in str(caught.value)


@needs_root
def test_a_symlink_another_user_owns_on_the_way_is_refused(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o1777)
    mine = base / "mine"
    mine.mkdir()
    link = base / "memwarden-0"
    link.symlink_to(mine)
    os.lchown(link, OTHER, OTHER)  # the other user could point it elsewhere at any time
    with pytest.raises(UnsafeDirectory, match="symbolic link owned by another user"):
        check_trusted(link, {0, ME}, "hint")
    os.lchown(link, ME, ME)
    check_trusted(link, {0, ME}, "hint")


@needs_root
def test_the_client_refuses_a_socket_in_another_users_directory_and_trusts_root_and_itself(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    theirs = base / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "control.sock").touch()
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(UnsafeDirectory, match=re.escape(f"{theirs} is owned by another user")):
        check_socket(theirs / "control.sock", dirs.client_trusted_uids(0), "hint")
    # Everything root owns is trusted; a missing socket is for connect() to report.
    (base / "control.sock").touch()
    check_socket(base / "control.sock", dirs.client_trusted_uids(0), "hint")
    with pytest.raises(FileNotFoundError):
        check_socket(base / "nothing" / "control.sock", dirs.client_trusted_uids(0), "hint")


@needs_root
def test_the_client_refuses_a_socket_another_user_owns_even_in_a_trusted_directory(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "control.sock").touch()
    os.chown(base / "control.sock", OTHER, OTHER)
    with pytest.raises(UnsafeDirectory, match=r"control\.sock is owned by another user"):
        check_socket(base / "control.sock", dirs.client_trusted_uids(0), "hint")


def test_client_trusts_root_itself_and_the_packaged_daemon_user(monkeypatch):
    monkeypatch.setattr(dirs, "system_user_uid", lambda: 990)
    assert dirs.client_trusted_uids(1000) == {0, 1000, 990}
    monkeypatch.setattr(dirs, "system_user_uid", lambda: None)
    assert dirs.client_trusted_uids(1000) == {0, 1000}


def test_a_file_where_a_directory_should_be_is_named(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "state").write_text("not a directory")
    with pytest.raises(Unwritable) as caught:
        dirs.ensure_writable_dir(base / "state" / "sub", "set x")
    assert str(caught.value) == f"{base}/state is not a directory: move it aside, or set x"


def test_unwritable_names_the_directory_that_blocks_and_the_uid(tmp_path):
    base = tmp_path / "base"
    base.mkdir(mode=0o700)
    exc = dirs.unwritable(base / "a" / "b", PermissionError(errno.EACCES, "Permission denied"), "set k", uid=65534)
    text = str(exc)
    assert text.startswith(f"cannot create {base}/a/b: {base} is not writable by ")
    assert "(uid 65534)" in text and "mode 0700" in text and text.endswith("or set k")
    ro = dirs.unwritable(base, OSError(errno.EROFS, "Read-only file system"), "set k")
    assert str(ro) == f"{base} is on a read-only filesystem: remount it read-write, or set k"
