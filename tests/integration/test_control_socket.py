"""Bad input on the control socket never hurts the daemon: after each case, `status` still answers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading

import pytest

from memwarden.control.protocol import MAX_LINE, RpcError


def raw(daemon, payload: bytes, shutdown_write: bool = True) -> list[dict]:
    """Send bytes, read every reply line until the daemon closes or we stop writing."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket_path))
        # The daemon may close on us mid-send (the long-line case): then read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(payload)
        if shutdown_write:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture
def checked(daemon):
    yield daemon
    assert daemon.call("status")["ready"] is True
    assert daemon.proc.poll() is None


def test_non_json_is_a_parse_error_and_the_connection_stays_usable(checked):
    replies = raw(checked, b"this is not json\n" + b'{"jsonrpc":"2.0","method":"status","id":7}\n')
    assert replies[0]["error"]["code"] == -32700 and replies[0]["id"] is None
    assert replies[1]["id"] == 7 and replies[1]["result"]["ready"] is True


def test_invalid_utf8_is_a_parse_error(checked):
    assert raw(checked, b'{"jsonrpc":"2.0","method":"\xff\xfe","id":1}\n')[0]["error"]["code"] == -32700


def test_a_10_mib_line_is_refused_and_the_connection_closed(checked):
    replies = raw(checked, b'{"jsonrpc":"2.0","method":"status","params":{"x":"' + b"a" * (10 * MAX_LINE)
                  + b'"},"id":1}\n' + b'{"jsonrpc":"2.0","method":"status","id":2}\n')
    assert len(replies) == 1
    assert replies[0]["error"]["code"] == -32002
    assert "exceeds" in replies[0]["error"]["message"]


def test_a_json_array_is_an_invalid_request(checked):
    replies = raw(checked, b'[{"jsonrpc":"2.0","method":"status","id":1}]\n')
    assert replies[0]["error"]["code"] == -32600
    assert "one object per line" in replies[0]["error"]["message"]


@pytest.mark.parametrize("payload", [b"42\n", b'"status"\n', b"null\n", b'{"method":"status","id":1}\n',
                                     b'{"jsonrpc":"2.0","id":1}\n', b'{"jsonrpc":"2.0","method":"status","id":[1]}\n',
                                     b'{"jsonrpc":"2.0","method":"status","params":3,"id":1}\n'])
def test_malformed_requests_are_invalid_requests(checked, payload):
    assert raw(checked, payload)[0]["error"]["code"] == -32600


def test_unknown_method_is_method_not_found_with_its_id(checked):
    reply = raw(checked, b'{"jsonrpc":"2.0","method":"launch.missiles","id":"abc"}\n')[0]
    assert reply["id"] == "abc"
    assert reply["error"]["code"] == -32601 and "launch.missiles" in reply["error"]["message"]


@pytest.mark.parametrize("params, fragment", [
    ({"limit": "ten"}, "limit"), ({"limit": 0}, "limit"), ({"nope": 1}, "nope")])
def test_wrong_params_are_invalid_params(checked, params, fragment):
    line = json.dumps({"jsonrpc": "2.0", "method": "alerts", "params": params, "id": 3}).encode() + b"\n"
    reply = raw(checked, line)[0]
    assert reply["error"]["code"] == -32602 and fragment in reply["error"]["message"]


def test_notifications_get_no_reply(checked):
    replies = raw(checked, b'{"jsonrpc":"2.0","method":"status"}\n{"jsonrpc":"2.0","method":"status","id":9}\n')
    assert [r["id"] for r in replies] == [9]


def test_half_a_line_then_a_hang_up(checked):
    assert raw(checked, b'{"jsonrpc":"2.0","method":"sta') == []


def test_a_client_that_connects_and_says_nothing_does_not_block_others(checked):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(checked.socket_path))
        assert checked.call("status")["ready"] is True


def test_200_concurrent_clients(checked):
    results: list = []
    errors: list = []
    start = threading.Barrier(200)

    def one() -> None:
        try:
            with checked.client(timeout=30) as c:
                start.wait(30)
                results.append(c.call("status")["pid"])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == [checked.pid] * 200


def test_state_changing_methods_are_refused_to_other_users(checked):
    """SO_PEERCRED: a client running as nobody may read but not reload."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as another user")
    os.chmod(checked.socket_path, 0o666)  # let 'nobody' reach the socket at all
    checked.workdir.chmod(0o755)
    script = (
        "import json,socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile('rb')\n"
        "for m in ('status','config.reload'):\n"
        "    s.sendall(json.dumps({'jsonrpc':'2.0','method':m,'id':m}).encode()+b'\\n')\n"
        "    print(f.readline().decode().strip())\n")
    import shutil
    import subprocess

    # The venv's interpreter may sit under /root; the client only needs the system Python's stdlib.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that another user can execute")
    out = subprocess.run([python, "-c", script, str(checked.socket_path)], user="nobody",
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status, reload = (json.loads(line) for line in out.stdout.splitlines())
    assert "result" in status
    assert reload["error"]["code"] == -32001 and "permission denied" in reload["error"]["message"]


def test_an_integer_of_5000_digits_gets_a_parse_error_and_the_connection_stays_usable(checked):
    replies = raw(checked, b'{"jsonrpc":"2.0","method":"alerts","params":{"limit":' + b"9" * 5000 + b'},"id":1}\n'
                  + b'{"jsonrpc":"2.0","method":"status","id":2}\n')
    assert replies[0]["error"]["code"] == -32700 and "digits" in replies[0]["error"]["message"]
    assert replies[1]["id"] == 2 and replies[1]["result"]["ready"] is True


GOOD_LINE = json.dumps({"profile": "alice", "kind": "journal", "content": "fine", "importance": 3})
HUGE_INT_LINE = '{"profile": "alice", "kind": "journal", "content": "x", "importance": ' + "1" * 5000 + "}"


def test_an_imported_line_with_a_5000_digit_integer_is_reported_by_its_number(checked):
    with checked.client() as c, pytest.raises(RpcError) as info:
        c.call("memories.import", {"lines": [GOOD_LINE, HUGE_INT_LINE]})
    assert info.value.code == -32000, info.value.message  # the import's report, not an internal error
    assert info.value.data["bad_lines"] == [[2, "a number has more than 4,300 digits"]]
    assert checked.call("memories.count")["total"] == 0


def test_a_staged_chunk_with_a_5000_digit_integer_reports_the_line(checked):
    with checked.client() as c:
        token = c.call("memories.import_begin")["token"]
        chunk = c.call("memories.import_chunk", {"token": token, "lines": [GOOD_LINE, HUGE_INT_LINE]})
        assert chunk["bad"] == [[2, "a number has more than 4,300 digits"]] and chunk["bad_count"] == 1
        c.call("memories.import_abort", {"token": token})
    assert checked.call("memories.count")["total"] == 0
