import asyncio
import contextlib
import json
import os
import signal
import stat
import time
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from memwarden import __version__
from memwarden.alerts.sinks.exec_hook import ExecSink, hook_env
from memwarden.alerts.sinks.queued import QueuedSink
from memwarden.alerts.sinks.webhook import WebhookSink

EVENT = {
    "event": "raised", "kind": "host.ram", "key": "host", "severity": "critical",
    "message": "RAM 97.0% used", "fields": {"value": 97.0, "metric": "ram"},
    "raised_at": 1700000000.123456, "at": 1700000000.123456, "notify_count": 1,
}


def event(n: int) -> dict:
    return {**EVENT, "kind": f"host.k{n}", "notify_count": n}


def script(tmp_path, body: str, name: str = "hook.sh"):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


async def readable(fd: int, timeout: float) -> None:
    """Wait (at most `timeout` s) until `fd` is readable, via the event loop."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)


# ---- QueuedSink ------------------------------------------------------------------------------------------


class GatedSink(QueuedSink):
    name = "gated"

    def __init__(self, maxsize: int, results=None):
        super().__init__(maxsize)
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.seen: list[dict] = []
        self.results = list(results or [])

    async def deliver(self, event):
        self.started.set()
        await self.gate.wait()
        self.seen.append(event)
        if self.results:
            result = self.results.pop(0)
            if isinstance(result, Exception):
                raise result
            return result
        return True


async def test_queued_sink_delivers_in_order():
    sink = GatedSink(maxsize=8)
    sink.gate.set()
    for n in range(3):
        sink.submit(event(n))
    await sink.drain(5)
    assert [e["notify_count"] for e in sink.seen] == [0, 1, 2]
    assert (sink.delivered, sink.failed, sink.dropped) == (3, 0, 0)


async def test_queued_sink_drops_oldest_when_full():
    sink = GatedSink(maxsize=2)
    sink.submit(event(1))
    await asyncio.wait_for(sink.started.wait(), 5)  # the worker holds event 1; the queue is empty
    sink.submit(event(2))
    sink.submit(event(3))  # queue full now: [2, 3]
    sink.submit(event(4))  # drops 2
    sink.submit(event(5))  # drops 3
    assert sink.dropped == 2
    sink.gate.set()
    await sink.drain(5)
    assert [e["notify_count"] for e in sink.seen] == [1, 4, 5]
    assert sink.delivered == 3


async def test_queued_sink_counts_failures_and_survives_exceptions():
    sink = GatedSink(maxsize=8, results=[False, RuntimeError("sink bug"), True])
    sink.gate.set()
    for n in range(3):
        sink.submit(event(n))
    await sink.drain(5)
    assert (sink.delivered, sink.failed) == (1, 2)
    assert len(sink.seen) == 3


async def test_queued_sink_restarts_worker_after_idle():
    sink = GatedSink(maxsize=8)
    sink.gate.set()
    sink.submit(event(1))
    await sink.drain(5)
    assert sink._task is not None and sink._task.done()
    sink.submit(event(2))
    await sink.drain(5)
    assert sink.delivered == 2


async def test_queued_sink_drain_times_out_and_close_cancels():
    sink = GatedSink(maxsize=8)
    sink.submit(event(1))
    await asyncio.wait_for(sink.started.wait(), 5)
    await sink.drain(0.01)  # returns although the worker is still blocked
    assert not sink._task.done()
    task = sink._task
    await sink.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.delivered == 0


async def test_drain_without_work_returns():
    sink = GatedSink(maxsize=1)
    await sink.drain(0.01)
    await sink.close()
    assert sink.delivered == 0


# ---- ExecSink --------------------------------------------------------------------------------------------


def test_hook_env_adds_alert_variables_to_base():
    env = hook_env(EVENT, {"PATH": "/bin", "MEMWARDEN_ALERT_KIND": "stale"})
    assert env["PATH"] == "/bin"
    assert env["MEMWARDEN_ALERT_EVENT"] == "raised"
    assert env["MEMWARDEN_ALERT_KIND"] == "host.ram"
    assert env["MEMWARDEN_ALERT_KEY"] == "host"
    assert env["MEMWARDEN_ALERT_SEVERITY"] == "critical"
    assert env["MEMWARDEN_ALERT_MESSAGE"] == "RAM 97.0% used"
    assert env["MEMWARDEN_ALERT_RAISED_AT"] == "1700000000.123"
    assert json.loads(env["MEMWARDEN_ALERT_FIELDS"]) == {"value": 97.0, "metric": "ram"}


async def test_exec_sink_passes_env_and_json_stdin(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    program = script(tmp_path, f"""
env | grep '^MEMWARDEN_ALERT_' | sort > '{out}/env'
cat > '{out}/stdin'
""")
    sink = ExecSink(program, timeout=30)
    assert await sink.deliver(EVENT) is True
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    assert env == {
        "MEMWARDEN_ALERT_EVENT": "raised",
        "MEMWARDEN_ALERT_KIND": "host.ram",
        "MEMWARDEN_ALERT_KEY": "host",
        "MEMWARDEN_ALERT_SEVERITY": "critical",
        "MEMWARDEN_ALERT_MESSAGE": "RAM 97.0% used",
        "MEMWARDEN_ALERT_RAISED_AT": "1700000000.123",
        "MEMWARDEN_ALERT_FIELDS": json.dumps(EVENT["fields"]),
    }
    assert json.loads((out / "stdin").read_text()) == EVENT


async def test_exec_sink_through_queue_counts_delivery(tmp_path):
    marker = tmp_path / "ran"
    program = script(tmp_path, f"cat > /dev/null; echo \"$MEMWARDEN_ALERT_KIND\" >> '{marker}'\n")
    sink = ExecSink(program, timeout=30)
    sink.submit(event(1))
    sink.submit(event(2))
    await sink.drain(30)
    assert (sink.delivered, sink.failed) == (2, 0)
    assert marker.read_text().splitlines() == ["host.k1", "host.k2"]


async def test_exec_sink_nonzero_exit_is_failure(tmp_path):
    program = script(tmp_path, "cat > /dev/null; echo broken >&2; exit 3\n")
    sink = ExecSink(program, timeout=30)
    assert await sink.deliver(EVENT) is False
    sink.submit(EVENT)
    await sink.drain(30)
    assert (sink.delivered, sink.failed) == (0, 1)


async def test_exec_sink_missing_program_is_failure(tmp_path):
    sink = ExecSink(tmp_path / "does-not-exist", timeout=5)
    assert await sink.deliver(EVENT) is False


async def test_exec_sink_non_executable_program_is_failure(tmp_path):
    program = tmp_path / "plain.sh"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o644)
    assert await ExecSink(program, timeout=5).deliver(EVENT) is False


async def test_exec_sink_timeout_kills_hook(tmp_path):
    pidfile = tmp_path / "pid"
    program = script(tmp_path, f"echo $$ > '{pidfile}'\nexec sleep 300\n")
    sink = ExecSink(program, timeout=0.5)
    started = time.monotonic()
    ok = await asyncio.wait_for(sink.deliver(EVENT), 60)
    assert ok is False
    assert time.monotonic() - started < 60
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


async def test_exec_sink_timeout_kills_the_hooks_children_too(tmp_path):
    # The hook runs in its own session (start_new_session=True); on time-out the whole session must go.
    # Otherwise a hook's stuck child (curl, say) lives on holding the stderr pipe, and deliver() waits for
    # it, blocking every later alert. The child also holds a FIFO open: EOF on it means the child is dead.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    program = script(tmp_path, f"exec 3>'{fifo}'\nsleep 300 &\necho $! >&3\nwait\n")
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    task = asyncio.ensure_future(ExecSink(program, timeout=0.5).deliver(EVENT))
    child_pid = None
    try:
        await readable(rfd, 30)
        child_pid = int(os.read(rfd, 100).split()[0])
        try:
            result = await asyncio.wait_for(asyncio.shield(task), 10)
        except TimeoutError:
            pytest.fail("deliver() did not return within 10 s of its 0.5 s time-out: "
                        f"the hook's child {child_pid} survived the kill and still holds the stderr pipe")
        assert result is False
        try:
            await readable(rfd, 5)
        except TimeoutError:
            pytest.fail(f"the hook's child process {child_pid} survived the time-out kill")
        assert os.read(rfd, 100) == b""  # EOF: no writer (the child) left
    finally:
        os.close(rfd)
        if child_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
        await asyncio.wait_for(task, 30)


# ---- WebhookSink -----------------------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1 that answers with scripted statuses."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, dict]] = []
        self.release = asyncio.Event()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((await request.json(), dict(request.headers)))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == "hang":
            await self.release.wait()
            status = 200
        return web.Response(status=status, text="x")

    async def __aenter__(self):
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc):
        self.release.set()
        await self.server.close()

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))


async def test_webhook_posts_json_with_user_agent():
    async with Receiver([200]) as rx:
        sink = WebhookSink(rx.url, timeout=10, retries=3, backoff=0.01)
        try:
            assert await sink.deliver(EVENT) is True
        finally:
            await sink.close()
    (body, headers), = rx.requests
    assert body == EVENT
    assert headers["User-Agent"] == f"memwarden/{__version__}"
    assert headers["Content-Type"].startswith("application/json")


async def test_webhook_retries_until_success():
    async with Receiver([500, 503, 200]) as rx:
        sink = WebhookSink(rx.url, timeout=10, retries=3, backoff=0.01)
        try:
            sink.submit(EVENT)
            await sink.drain(30)
        finally:
            await sink.close()
    assert len(rx.requests) == 3
    assert all(body == EVENT for body, _ in rx.requests)
    assert (sink.delivered, sink.failed) == (1, 0)


async def test_webhook_gives_up_after_retries():
    async with Receiver([500] * 10) as rx:
        sink = WebhookSink(rx.url, timeout=10, retries=2, backoff=0.01)
        try:
            assert await sink.deliver(EVENT) is False
        finally:
            await sink.close()
    assert len(rx.requests) == 3  # first try + 2 retries


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_webhook_client_error_is_not_retried(status):
    async with Receiver([status, 200]) as rx:
        sink = WebhookSink(rx.url, timeout=10, retries=3, backoff=0.01)
        try:
            sink.submit(EVENT)
            await sink.drain(30)
        finally:
            await sink.close()
    assert len(rx.requests) == 1
    assert (sink.delivered, sink.failed) == (0, 1)


@pytest.mark.parametrize("status", [408, 429])
async def test_webhook_retryable_client_errors_are_retried(status):
    async with Receiver([status, 200]) as rx:
        sink = WebhookSink(rx.url, timeout=10, retries=3, backoff=0.01)
        try:
            assert await sink.deliver(EVENT) is True
        finally:
            await sink.close()
    assert len(rx.requests) == 2


async def test_webhook_backoff_doubles(monkeypatch):
    import memwarden.alerts.sinks.webhook as webhook_mod

    waits: list[float] = []

    async def fake_sleep(seconds):
        waits.append(seconds)

    # Replace only the webhook module's view of asyncio: aiohttp itself keeps the real sleep.
    monkeypatch.setattr(webhook_mod, "asyncio", SimpleNamespace(sleep=fake_sleep))
    async with Receiver([500, 500, 500, 200]) as rx:
        sink = WebhookSink(rx.url, timeout=10, retries=3, backoff=0.5)
        try:
            assert await sink.deliver(EVENT) is True
        finally:
            await sink.close()
    assert waits == [0.5, 1.0, 2.0]


async def test_webhook_timeout_counts_as_failed_attempt():
    from structlog.testing import capture_logs

    async with Receiver(["hang", "hang"]) as rx:
        sink = WebhookSink(rx.url, timeout=0.2, retries=1, backoff=0.01)
        try:
            with capture_logs() as logs:
                assert await sink.deliver(EVENT) is False
        finally:
            await sink.close()
    assert rx.requests  # the first POST arrived and hung; the retry may time out before the server reads it
    (failed,) = [e for e in logs if e["event"] == "webhook delivery failed"]
    assert failed["attempts"] == 2 and "TimeoutError" in failed["error"]


async def test_webhook_connection_refused_is_failure():
    async with Receiver([]) as rx:
        url = rx.url
    sink = WebhookSink(url, timeout=5, retries=1, backoff=0.01)
    try:
        assert await sink.deliver(EVENT) is False
    finally:
        await sink.close()


async def test_webhook_close_closes_session():
    async with Receiver([200]) as rx:
        sink = WebhookSink(rx.url, timeout=10, retries=0)
        assert await sink.deliver(EVENT) is True
        session = sink._session
        await sink.close()
    assert session.closed
