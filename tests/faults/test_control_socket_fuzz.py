"""Fuzzing the control socket of a real memwardend: whatever arrives, every answer is a well-formed JSON-RPC
response (never an internal error), an over-long line is refused and its connection closed, and afterwards the
daemon still answers, has not exited, and has not grown.

The daemon runs with no GPU, no Ollama, no containers and learning off, so no method can reach outside its
throw-away directory; the two long-polls (lease.acquire's `wait`, lease.watch's `timeout`) are capped so that
every request is answered within the read time-out.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import threading
import types
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from memwarden.config import Config
from memwarden.control.methods import register_all
from memwarden.control.protocol import INTERNAL_ERROR, LINE_TOO_LONG, MAX_LINE, RpcError, parse_request
from memwarden.control.registry import Registry
from support.daemon import DaemonProcess

READ_TIMEOUT = 20.0
RSS_GROWTH_LIMIT = 10 * 1024 * 1024

# Values that have broken parsers elsewhere: huge and negative numbers, NaN-like and unit-like strings, NULs.
NASTY = ("NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "9" * 400, "9" * 400 + "GiB", "-1", "0", "",
         " ", "\x00", "4GiB", "1.5GB", "5m", "-5m", "1h30m", "250ms", "/", "../../etc/passwd", "conversation",
         "\ufffd", "é" * 300, "%s%n", "{}", "[]",
         "2026-01-01T00:00:00", "1970-01-01", "9999-12-31T23:59:59Z")
_NO_ID = object()  # a request without an id: a notification
SETTINGS = dict(deadline=None, database=None, derandomize=False, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def scaled(n: int) -> int:
    """MEMWARDEN_FUZZ_SCALE=N multiplies every fuzzer's example count (bench/fuzz_counts.py)."""
    return max(1, round(n * float(os.environ.get("MEMWARDEN_FUZZ_SCALE", "1"))))


def signatures() -> dict[str, tuple[str, ...]]:
    """Each method's parameter names, read off the real handlers (registered against stub parts), so that
    junk reaches the handlers' own checks and not only the registry's "unexpected keyword argument"."""
    registry = Registry()
    register_all(registry, types.SimpleNamespace(memories=object(), config=Config(), readings=None), reload=None)
    return {name: tuple(p for p in inspect.signature(m.handler).parameters if p != "peer")
            for name, m in registry.methods.items()}


SIGNATURES = signatures()


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    d = DaemonProcess(config={"daemon": {"log_level": "info"}, "containers": {"enabled": False},
                              "learning": {"enabled": False}})
    try:
        d.start()
        names = [m["name"] for m in d.call("methods")]
        assert sorted(names) == sorted(SIGNATURES), "the stub registry must list the daemon's methods"
        d.method_names = names  # type: ignore[attr-defined]
        yield d
        assert d.proc.poll() is None, f"memwardend exited with {d.proc.returncode}; log:\n{d.log()[-4000:]}"
        assert d.call("status")["ready"] is True
        assert "Traceback" not in d.log(), d.log()[-6000:]
    finally:
        d.stop()
        d.cleanup()


# ---- the wire --------------------------------------------------------------------------------------------


def exchange(d: DaemonProcess, payload: bytes, hang_up: bool = True) -> tuple[list[dict], bool]:
    """Send `payload` (from a thread, so that replies never back up behind it) and read every reply line until
    the daemon closes. Returns (replies, whether the daemon closed the connection before we hung up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(READ_TIMEOUT)
        s.connect(str(d.socket_path))
        sent = threading.Event()

        def send() -> None:
            # The daemon may close on us mid-send (an over-long line): then read what it said.
            with contextlib.suppress(OSError):
                s.sendall(payload)
                if hang_up:
                    s.shutdown(socket.SHUT_WR)
            sent.set()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = bytearray()
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"no reply (or no close) within {READ_TIMEOUT}s to {payload[:300]!r}") \
                    from None
            if not chunk:
                break
            data += chunk
        sender.join(READ_TIMEOUT)
    closed_early = not sent.is_set()
    assert data == b"" or data.endswith(b"\n"), f"a reply cut short: {bytes(data[-200:])!r}"
    return [json.loads(line) for line in bytes(data).splitlines()], closed_early


def check_reply(reply: object) -> dict:
    assert isinstance(reply, dict), reply
    assert reply.get("jsonrpc") == "2.0" and "id" in reply, reply
    assert set(reply) <= {"jsonrpc", "id", "result", "error"}, reply
    assert ("result" in reply) != ("error" in reply), reply
    if "error" in reply:
        err = reply["error"]
        assert isinstance(err, dict) and set(err) <= {"code", "message", "data"}, reply
        assert isinstance(err["code"], int) and not isinstance(err["code"], bool), reply
        assert isinstance(err["message"], str) and err["message"], reply
        assert err["code"] != INTERNAL_ERROR, f"an internal error is a bug: {reply}"
    return reply


def expects_reply(line: bytes) -> bool:
    """Whether the daemon owes this line an answer: everything but a blank line or a well-formed notification."""
    if not line.strip():
        return False
    try:
        return not parse_request(line).is_notification
    except RpcError:
        return True


def check_exchange(d: DaemonProcess, lines: list[bytes], ids: list[object] | None = None) -> list[dict]:
    payload = b"".join(line + b"\n" for line in lines)
    replies, _ = exchange(d, payload)
    for r in replies:
        check_reply(r)
    owed = [line for line in lines if expects_reply(line)]
    assert len(replies) == len(owed), f"{len(owed)} answers owed, {len(replies)} given: {lines!r} → {replies!r}"
    if ids is not None:
        for want, r in zip([i for i, line in zip(ids, lines, strict=True) if expects_reply(line)], replies,
                           strict=True):
            if want is not _NO_ID and r.get("result") is not None:
                assert r["id"] == want, (want, r)
    return replies

# ---- strategies ------------------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(), st.text(max_size=40), st.sampled_from(NASTY))  # floats: NaN and ±Infinity too, as JSON allows
json_value = st.recursive(json_leaf, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)), max_leaves=20)
# Mostly values of a plausible type (so that calls get past the type checks into the handlers), some junk.
plausible = st.one_of(st.text(max_size=20), st.integers(-5, 10**6), st.sampled_from(NASTY), st.booleans())
value = st.one_of(plausible, plausible, plausible, json_value)
memory_line = st.one_of(json_value.map(json.dumps), st.fixed_dictionaries(
    {"profile": st.sampled_from(["alice", "bob", "", "x" * 300]), "kind": st.sampled_from(["journal", "dream", ""]),
     "content": st.text(max_size=50), "importance": st.one_of(st.integers(-2, 12), json_leaf)},
    optional={"response": json_leaf, "created_at": json_leaf, "extra": json_leaf}).map(json.dumps))
typed = {"lines": st.one_of(st.lists(st.one_of(memory_line, st.none()), max_size=6), json_value),
         "importance": st.one_of(st.integers(0, 11), json_value),
         "profile": st.one_of(st.sampled_from(["alice", "bob"]), json_value),
         "kind": st.one_of(st.sampled_from(["journal", "conversation"]), json_value)}


@st.composite
def params_for(draw, method: str) -> dict:
    """A random subset of the method's own parameters with junk (or plausible) values, now and then a stranger."""
    names = SIGNATURES.get(method, ())
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    p = {n: draw(typed.get(n, value)) for n in chosen}
    if draw(st.integers(0, 5)) == 0:
        p[draw(st.text(max_size=12))] = draw(json_value)
    return p
valid_ids = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.text(max_size=20), st.none())
bad_ids = st.one_of(st.just(_NO_ID), st.booleans(), st.floats(), st.lists(st.integers(), max_size=2))


def sanitize(method: str, p: dict) -> dict:
    # A long-poll answers when its time is up: cap it so that each request is answered within READ_TIMEOUT.
    if method == "lease.acquire" and "wait" in p:
        p["wait"] = 0
    if method == "lease.watch" and "timeout" in p:
        p["timeout"] = 0
    return p


@st.composite
def requests(draw, methods: list[str]) -> tuple[bytes, object]:
    if draw(st.integers(0, 9)):
        method = draw(st.sampled_from(methods))
    else:
        method = draw(st.one_of(st.text(max_size=30), st.sampled_from(
            ["", "methods.", "status\x00", "__init__", "peer", "../status", "STATUS"])))
    obj: dict[str, object] = {"jsonrpc": "2.0" if draw(st.integers(0, 9)) else draw(st.sampled_from(["1.0", 2.0]))}
    obj["method"] = method
    p = sanitize(method, draw(params_for(method)))
    if draw(st.booleans()) or p:
        obj["params"] = p if draw(st.integers(0, 9)) else draw(json_value)
    req_id = draw(valid_ids) if draw(st.integers(0, 4)) else draw(bad_ids)  # a notification hides an error
    if req_id is not _NO_ID:
        obj["id"] = req_id
    if draw(st.integers(0, 19)) == 0:
        obj[draw(st.text(min_size=1, max_size=8))] = draw(json_leaf)  # an unexpected member
    line = json.dumps(obj, allow_nan=True).encode()
    if draw(st.integers(0, 19)) == 0:
        line = json.dumps([obj] * draw(st.integers(0, 3))).encode()  # a batch: refused as such
    return line, req_id


raw_lines = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff\xfe", b"\x00" * 64, b"{", b"}", b"[", b'{"jsonrpc":"2.0"', b"null", b"[]", b"{}",
                     b'"\\ud800"', b"1e999999", b"-" * 100, b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000,
                     b"NaN", b"Infinity", b'{"jsonrpc":"2.0","method":"status","id":NaN}']),
).map(lambda b: b.replace(b"\n", b" "))


# ---- the fuzzers -----------------------------------------------------------------------------------------


def run_structured(d: DaemonProcess, count, n: int, seed_value: int) -> None:
    @seed(seed_value)
    @settings(max_examples=n, **SETTINGS)
    @given(st.lists(requests(d.method_names), min_size=1, max_size=8))
    def fuzz(batch):
        count.inputs += 1
        count.add("requests", len(batch))
        check_exchange(d, [line for line, _ in batch], [i for _, i in batch])

    fuzz()


def run_raw(d: DaemonProcess, count, n: int, seed_value: int) -> None:
    @seed(seed_value)
    @settings(max_examples=n, **SETTINGS)
    @given(st.lists(raw_lines, min_size=1, max_size=8), st.booleans())
    def fuzz(lines, then_valid):
        count.inputs += 1
        count.add("raw_lines", len(lines))
        if then_valid:  # the connection must still be usable after junk
            lines = [*lines, b'{"jsonrpc":"2.0","method":"status","id":"after"}']
        replies = check_exchange(d, lines)
        if then_valid:
            assert replies[-1]["id"] == "after" and replies[-1]["result"]["ready"] is True

    fuzz()


def test_structured_requests_with_junk_params_get_well_formed_answers(daemon, fuzz_count):
    assert {"status", "memories.add", "lease.acquire", "alerts"} <= set(daemon.method_names)
    run_structured(daemon, fuzz_count, scaled(600), 1)
    assert daemon.call("status")["ready"] is True


@st.composite
def staged_imports(draw) -> tuple[list[tuple[list[str | None], int]], str, int | None]:
    chunks = draw(st.lists(st.lists(st.one_of(memory_line, st.none(), st.text(max_size=30)), max_size=6),
                           min_size=0, max_size=4))
    out, line = [], 1
    for chunk in chunks:
        first = line if draw(st.integers(0, 7)) else draw(st.integers(-3, 50))  # now and then out of order
        out.append((chunk, first))
        line += len(chunk)
    total = draw(st.one_of(st.none(), st.just(line - 1), st.integers(-1, 40)))
    return out, draw(st.sampled_from(["commit", "commit", "abort", "leave"])), total


def test_staged_imports_with_junk_chunks_are_all_or_nothing(make_daemon, fuzz_count):
    """begin → chunks of junk lines (some out of order) → commit, abort or walk away: every answer is well-formed,
    and the memories table grows by exactly what a commit says it imported, or not at all. (A daemon of its own:
    the other fuzzers' import_begin calls hold import sessions, at most 4, for IMPORT_IDLE_TIMEOUT.)"""
    daemon = make_daemon(config={"daemon": {"log_level": "info"}}).start()

    def total() -> int:
        return daemon.call("memories.count")["total"]

    @seed(4)
    @settings(max_examples=scaled(150), **SETTINGS)
    @given(staged_imports())
    def fuzz(plan):
        chunks, end, total_lines = plan
        fuzz_count.inputs += 1
        before = total()
        imported = 0
        refused: list[str] = []
        with daemon.client(timeout=READ_TIMEOUT) as c:
            def call(method, params):
                fuzz_count.add("requests")
                try:
                    return c.call(method, params)
                except RpcError as err:
                    assert err.code != INTERNAL_ERROR, err.message
                    refused.append(f"{method}: {err.message}")
                    return None

            begun = call("memories.import_begin", {})
            assert begun is not None, refused
            for lines, first in chunks:
                call("memories.import_chunk", {"token": begun["token"], "lines": lines, "first_line": first})
            if end == "commit":
                result = call("memories.import_commit", {"token": begun["token"], "total_lines": total_lines})
                imported = result["imported"] if result else 0
                if result is None and "invalid params" in refused[-1]:
                    # A commit refused for its params never ran: the session is still there, to commit right.
                    assert call("memories.import_abort", {"token": begun["token"]})["aborted"] is True
            elif end == "abort":
                assert call("memories.import_abort", {"token": begun["token"]})["aborted"] is True
        assert total() == before + imported
        if end == "leave":  # walked away: drop it now rather than after IMPORT_IDLE_TIMEOUT (4 may be staged)
            assert daemon.call("memories.import_abort", {"token": begun["token"]})["aborted"] is True

    fuzz()


def test_raw_bytes_get_parse_errors_and_the_connection_stays_usable(daemon, fuzz_count):
    run_raw(daemon, fuzz_count, scaled(500), 2)
    assert daemon.call("status")["ready"] is True


def test_a_partial_line_then_a_hang_up_gets_no_answer_and_hurts_nothing(daemon, fuzz_count):
    @seed(3)
    @settings(max_examples=scaled(150), **SETTINGS)
    @given(st.lists(raw_lines, max_size=3), raw_lines.filter(lambda b: b.strip()))
    def fuzz(whole, partial):
        fuzz_count.inputs += 1
        fuzz_count.add("partial_lines")
        payload = b"".join(line + b"\n" for line in whole) + partial  # the last line never ends
        replies, _ = exchange(daemon, payload)
        assert len(replies) == sum(expects_reply(line) for line in whole)
        for r in replies:
            check_reply(r)

    fuzz()
    assert daemon.call("status")["ready"] is True


@pytest.mark.parametrize("extra", [-1, 0, 1, 4096, MAX_LINE])
def test_lines_at_and_over_the_1_mib_limit(daemon, fuzz_count, extra):
    """A line of up to MAX_LINE bytes (the newline not counted) is read and answered; a longer one is refused
    with LINE_TOO_LONG and the connection closed, whatever follows it."""
    head = b'{"jsonrpc":"2.0","method":"alerts","params":{"limit":"'
    tail = b'"},"id":7}'
    line = head + b"x" * (MAX_LINE + extra - len(head) - len(tail)) + tail
    assert len(line) == MAX_LINE + extra
    fuzz_count.inputs += 1
    fuzz_count.add("huge_lines")
    replies, _ = exchange(daemon, line + b"\n" + b'{"jsonrpc":"2.0","method":"status","id":8}\n')
    for r in replies:
        check_reply(r)
    if extra <= 0:
        assert [r["id"] for r in replies] == [7, 8]
        assert replies[0]["error"]["code"] == -32602 and "limit" in replies[0]["error"]["message"]
    else:
        assert len(replies) == 1 and replies[0]["error"]["code"] == LINE_TOO_LONG
        assert str(MAX_LINE) in replies[0]["error"]["message"]
    assert daemon.call("status")["ready"] is True


def test_rss_stays_flat_under_fuzzing(daemon, fuzz_count):
    """After a warm-up round, another round of fresh inputs (structured, raw, and 1 MiB lines) must not grow the
    daemon's resident set by more than RSS_GROWTH_LIMIT."""
    proc = psutil.Process(daemon.pid)
    big = b'{"jsonrpc":"2.0","method":"status","params":{"x":"' + b"y" * (MAX_LINE - 100) + b'"},"id":1}\n'

    def round_(seed_value: int) -> None:
        run_structured(daemon, fuzz_count, scaled(300), seed_value)
        run_raw(daemon, fuzz_count, scaled(200), seed_value + 1)
        for _ in range(10):
            replies, _ = exchange(daemon, big)
            check_reply(replies[0])
            fuzz_count.add("huge_lines")

    round_(10)
    warm = proc.memory_info().rss
    round_(20)
    end = proc.memory_info().rss
    fuzz_count.add("rss_after_warmup_bytes", warm)
    fuzz_count.add("rss_end_bytes", end)
    assert end - warm < RSS_GROWTH_LIMIT, f"RSS grew {(end - warm) / 2**20:.1f} MiB after warm-up"
