"""Every reply is bounded: memories.list answers in pages, built off the event loop; clients that ask for the
largest page and never read it neither stall the daemon nor grow it; and the client reads replies over 1 MiB."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from memwarden.learning.pages import MAX_PAGE_CHARS, MAX_PAGE_ROWS
from memwarden.learning.store import MAX_TEXT, MemoryStore
from memwarden.state.db import open_state
from support.daemon import BIN
from support.ollama_double.manager import wait_until

MEMORIES = 10_000
TEXT = 5_000  # characters per memory: a store of about 50 MB
READERS = 25


def fill(state_dir: Path, count: int, text: int, response: int = 0) -> None:
    """Write `count` memories straight into a state database (before its daemon starts)."""
    db = open_state(state_dir)
    try:
        lines = (json.dumps({"profile": "alice", "kind": "journal", "importance": 5, "created_at": i,
                             "content": f"{i:06d} " + "m" * (text - 7),
                             **({"response": "r" * response} if response else {})}) for i in range(count))
        MemoryStore(db).import_lines(lines)
    finally:
        db.conn.close()


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    """One 50 MB store for the module; each test's daemon starts on a copy of it."""
    state = tmp_path_factory.mktemp("store") / "state"
    fill(state, MEMORIES, TEXT)
    return state


@pytest.fixture
def daemon(make_daemon, big_store):
    d = make_daemon(config={"daemon": {"log_level": "info"}})
    shutil.copytree(big_store, d.workdir / "state")
    return d.start()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_page_is_bounded_and_next_offset_walks_every_memory(daemon):
    page = daemon.call("memories.list", {"limit": 10000})
    assert page["total"] == MEMORIES
    assert 0 < len(page["memories"]) <= MAX_PAGE_ROWS
    assert sum(len(m["content"]) for m in page["memories"]) <= MAX_PAGE_CHARS
    assert page["next_offset"] == len(page["memories"])
    seen = [m["id"] for m in page["memories"]]
    while page["next_offset"] is not None:
        page = daemon.call("memories.list", {"limit": 10000, "offset": page["next_offset"]})
        seen += [m["id"] for m in page["memories"]]
    assert len(seen) == len(set(seen)) == MEMORIES
    created = [m["created_at"] for m in daemon.call("memories.list", {"limit": 3, "offset": 5})["memories"]]
    assert created == [MEMORIES - 6, MEMORIES - 7, MEMORIES - 8]  # newest first, from the offset


def test_clients_that_never_read_the_largest_page_neither_stall_nor_grow_the_daemon(daemon):
    before = rss(daemon.pid)
    request = json.dumps({"jsonrpc": "2.0", "method": "memories.list", "params": {"limit": 10000},
                          "id": 1}).encode() + b"\n"
    hogs = []
    peak = before
    stop = threading.Event()

    def watch_rss() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            with contextlib.suppress(OSError):
                peak = max(peak, rss(daemon.pid))

    watcher = threading.Thread(target=watch_rss, daemon=True)
    watcher.start()
    try:
        for _ in range(READERS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(str(daemon.socket_path))
            s.sendall(request * 4)  # and more asked behind it, never read
            hogs.append(s)
        answered = 0
        for s in hogs:  # each has its reply coming, unread; meanwhile the daemon answers another client
            s.settimeout(120)
            assert s.recv(1, socket.MSG_PEEK) == b"{"
            assert daemon.call("status")["ready"] is True
            answered += 1
        assert answered == READERS
    finally:
        stop.set()
        watcher.join(5)
        for s in hogs:
            s.close()
    grown = peak - before
    assert grown < 300 * 2**20, f"RSS grew {grown / 2**20:.0f} MiB with {READERS} unread pages"
    wait_until(lambda: daemon.call("diagnostics")["clients"] == 1, timeout=60, message="the hogs' slots freed")


def test_memories_list_shows_long_memories_over_1_mib(make_daemon):
    d = make_daemon()
    fill(d.workdir / "state", 6, MAX_TEXT, response=MAX_TEXT)  # 6 × 400,000 characters: a reply of 2.4 MB
    d.start()
    out = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "--json", "memories", "list",
                          "--limit", "6"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert len(listed["memories"]) == 6 and listed["next_offset"] is None
    assert all(len(m["content"]) == MAX_TEXT and len(m["response"]) == MAX_TEXT for m in listed["memories"])
    table = subprocess.run([BIN / "memwardenctl", "--socket", d.socket_path, "memories", "list", "--limit", "6"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert table.stdout.count(" journal ") == 6  # one row per memory
