import os
import socket

from memwarden.control.peer import Peer, may_change_state, peer_of


def status_file(root, pid, groups_line):
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "status").write_text(f"Name:\tx\nUid:\t1\t1\t1\t1\n{groups_line}\nVmRSS:\t1 kB\n")


def test_groups_from_proc_status(tmp_path):
    status_file(tmp_path, 42, "Groups:\t4 24 27 ")
    assert Peer(42, 1000, 1000).groups(tmp_path) == {1000, 4, 24, 27}


def test_groups_fall_back_to_primary_gid(tmp_path):
    assert Peer(43, 1000, 1000).groups(tmp_path) == {1000}
    status_file(tmp_path, 44, "Groups:\tnot-a-number")
    assert Peer(44, 1000, 7).groups(tmp_path) == {7}


def test_root_and_own_user_may_change_state():
    assert may_change_state(Peer(1, 0, 0), "", own_uid=1000)
    assert may_change_state(Peer(1, 1000, 1000), "", own_uid=1000)


def test_others_may_not_without_admin_group():
    assert not may_change_state(Peer(1, 2000, 2000), "", own_uid=1000)
    assert not may_change_state(Peer(1, 2000, 2000), "no-such-group-memwarden-test", own_uid=1000)


def test_admin_group_member_may_change_state():
    # gid 0 is the "root" group; the peer's primary gid counts as membership.
    assert may_change_state(Peer(2**22 + 1, 2000, 0), "root", own_uid=1000)
    assert not may_change_state(Peer(2**22 + 1, 2000, 2000), "root", own_uid=1000)


def test_peer_of_a_socketpair_is_us():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert peer_of(a) == Peer(os.getpid(), os.getuid(), os.getgid())
    finally:
        a.close()
        b.close()
