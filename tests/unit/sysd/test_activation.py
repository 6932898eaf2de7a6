import json
import os
import socket
import subprocess
import sys

import pytest

from memwarden.sysd.activation import listen_fds, unix_listener


def test_other_pid_gets_nothing_and_vars_are_unset():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "control",
           "OTHER": "kept"}
    assert listen_fds(env) == []
    assert env == {"OTHER": "kept"}


def test_unset_false_keeps_vars():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert listen_fds(env, unset=False) == []
    assert env == {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}


@pytest.mark.parametrize(
    "env", [{}, {"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, {"LISTEN_PID": "1"}, {"LISTEN_FDS": "1"}])
def test_missing_or_malformed_vars_give_nothing(env):
    assert listen_fds(dict(env)) == []


def test_zero_fds_for_us_gives_nothing():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
    assert listen_fds(env) == []
    assert env == {}


CHILD = r"""
import fcntl, json, os, socket, sys, tempfile
from memwarden.sysd.activation import listen_fds, unix_listener

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind(sys.argv[1])
unix.listen(1)
plain = tempfile.TemporaryFile()
# Park the fds above 3..5 first so the dup2s below do not clobber one another.
high = [fcntl.fcntl(f.fileno(), fcntl.F_DUPFD, 20) for f in (udp, plain, unix)]
for target, fd in zip((3, 4, 5), high):  # fd 4 is not a socket: skipped
    os.dup2(fd, target)
env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a:b:c"}
socks = listen_fds(env)
chosen = unix_listener(socks)
print(json.dumps({
    "fds": [s.fileno() for s in socks],
    "inheritable": [os.get_inheritable(s.fileno()) for s in socks],
    "chosen": chosen.fileno() if chosen else None,
    "chosen_name": chosen.getsockname() if chosen else None,
    "env": env,
}))
"""


def test_passed_sockets_are_returned_in_a_fresh_process(tmp_path):
    sock_path = tmp_path / "c.sock"
    out = subprocess.run([sys.executable, "-c", CHILD, str(sock_path)], capture_output=True, text=True,
                         timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["fds"] == [3, 5]
    assert result["inheritable"] == [False, False]
    assert result["chosen"] == 5
    assert result["chosen_name"] == str(sock_path)
    assert result["env"] == {}


def test_unix_listener_picks_unix_stream():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert unix_listener([udp, dgram, stream]) is stream
        assert unix_listener([udp, dgram]) is None
        assert unix_listener([]) is None
    finally:
        for s in (udp, dgram, stream):
            s.close()
