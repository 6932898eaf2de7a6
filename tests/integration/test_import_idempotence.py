"""An import is committed once per import id: when the commit went through but its answer was lost, the retry
is told "already imported" and nothing is imported twice."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from memwarden.cli import memory_import, memwardenctl
from memwarden.control.client import Client, ConnectError
from memwarden.control.protocol import request_line
from support.daemon import BIN
from support.ollama_double.manager import wait_until

N = 40


def line(i: int) -> str:
    return json.dumps({"profile": "alice", "kind": "journal", "content": f"memory {i}", "importance": 3})


@pytest.fixture
def jsonl(daemon):
    path = daemon.workdir / "memories.jsonl"
    path.write_text("\n".join(line(i) for i in range(N)) + "\n")
    return path


def total(daemon) -> int:
    return daemon.call("memories.count")["total"]


def test_a_commit_whose_answer_was_never_read_is_not_imported_again(daemon, jsonl):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(daemon.socket_path))
        replies = s.makefile("rb")

        def call(method, params, req_id):
            s.sendall(request_line(method, params, req_id))
            return json.loads(replies.readline())["result"]

        token = call("memories.import_begin", {"import_id": "nightly-2024-05-01"}, 1)["token"]
        call("memories.import_chunk", {"token": token, "lines": jsonl.read_text().splitlines()}, 2)
        s.sendall(request_line("memories.import_commit", {"token": token, "total_lines": N}, 3))
        wait_until(lambda: total(daemon) == N, timeout=30, message="the commit went through")
    # ... and its client hung up without reading the answer. The retry, under the same id:
    again = subprocess.run([BIN / "memwardenctl", "--socket", daemon.socket_path, "memories", "import",
                            "--import-id", "nightly-2024-05-01", jsonl], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().startswith(f"already imported, {N} memories")
    assert total(daemon) == N
    as_json = subprocess.run([BIN / "memwardenctl", "--socket", daemon.socket_path, "--json", "memories", "import",
                              "--import-id", "nightly-2024-05-01", jsonl], capture_output=True, text=True,
                             timeout=120)
    assert json.loads(as_json.stdout) | {"committed_at": 0} == {
        "imported": N, "by_adapter": {"alice": N}, "import_id": "nightly-2024-05-01", "already_imported": True,
        "token": None, "committed_at": 0}
    assert total(daemon) == N


def test_memwardenctl_sends_an_import_again_when_the_commits_answer_is_lost(daemon, jsonl, monkeypatch, capsys):
    """The daemon commits; the connection drops before the answer. memwardenctl reconnects and sends the same
    import under the same id: the daemon says it has it, and the store holds each memory once."""
    real_call = Client.call
    dropped = []

    def call(self, method, params=None):
        if method == "memories.import_commit" and not dropped:
            dropped.append(params)
            self._sock.sendall(request_line(method, params, 99))
            wait_until(lambda: total(daemon) == N, timeout=30, message="the commit went through")
            raise ConnectError("the daemon closed the connection without answering")
        return real_call(self, method, params)

    monkeypatch.setattr(Client, "call", call)
    monkeypatch.setattr(memory_import, "RETRY_PAUSE", 0.0)
    code = memwardenctl.main(["--socket", str(daemon.socket_path), "memories", "import", str(jsonl)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert dropped and "sending it again as import" in out.err
    assert out.out.startswith(f"already imported, {N} memories")
    assert total(daemon) == N


def test_a_single_request_import_is_idempotent_too(daemon):
    lines = [line(i) for i in range(5)]
    first = daemon.call("memories.import", {"lines": lines, "import_id": "one-shot"})
    assert first["imported"] == 5 and first["already_imported"] is False
    second = daemon.call("memories.import", {"lines": lines, "import_id": "one-shot"})
    assert second["already_imported"] is True and second["imported"] == 5
    assert total(daemon) == 5


def test_an_import_id_must_look_like_one(daemon):
    from memwarden.control.protocol import INVALID_PARAMS, RpcError

    with daemon.client() as c, pytest.raises(RpcError) as info:
        c.call("memories.import_begin", {"import_id": "x" * 500})
    assert info.value.code == INVALID_PARAMS and "import_id" in info.value.message
