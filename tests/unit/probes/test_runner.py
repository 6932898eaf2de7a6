import asyncio
import threading

import pytest

from memwarden.probes.runner import ProbeRunner


class SyncProbe:
    name = "host"

    def __init__(self, results):
        self.results = list(results)  # values to return or exceptions to raise, in order
        self.calls = 0
        self.threads: list[str] = []

    def read(self):
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


class BlockingProbe:
    """The first call blocks until `release` is set; later calls return at once."""

    name = "gpu"

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def read(self):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(timeout=60)
            return "late"
        return f"snap{self.calls}"


class AsyncProbe:
    name = "ollama"

    def __init__(self, results):
        self.results = list(results)
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def read(self):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


@pytest.fixture
def runners():
    made: list[ProbeRunner] = []
    yield made
    for r in made:
        r.close()


def make(runners, probe, timeout=5.0) -> ProbeRunner:
    runner = ProbeRunner(probe, timeout)
    runners.append(runner)
    return runner


async def test_sync_probe_value_in_its_own_thread(runners):
    probe = SyncProbe(["one", "two"])
    r = make(runners, probe)
    assert r.name == "host"
    assert await r.sample() == "one"
    assert await r.sample() == "two"
    assert (r.last, r.error, r.degraded, r.hung) == ("two", None, False, False)
    assert r.last_ok_at is not None
    assert probe.threads[0].startswith("probe-host")
    assert probe.threads[0] != threading.current_thread().name


async def test_raising_probe_is_degraded_then_recovers(runners):
    probe = SyncProbe(["good", RuntimeError("NVML: driver gone"), ValueError(), "better"])
    r = make(runners, probe)
    assert await r.sample() == "good"
    first_ok = r.last_ok_at

    assert await r.sample() is None
    assert r.degraded is True
    assert r.error == "NVML: driver gone"
    assert r.hung is False
    assert r.last == "good"  # the last good snapshot is kept
    assert r.last_ok_at == first_ok

    assert await r.sample() is None
    assert r.error == "ValueError()"  # no message: the repr

    assert await r.sample() == "better"
    assert (r.degraded, r.error, r.last) == (False, None, "better")
    assert probe.calls == 4


async def test_blocking_probe_is_hung_and_not_called_again_until_it_returns(runners):
    probe = BlockingProbe()
    r = make(runners, probe, timeout=0.05)
    try:
        assert await r.sample() is None
        assert r.hung is True
        assert r.hung_since is not None
        assert r.degraded is True
        assert r.error == "gpu probe call stuck for more than 0.05s"

        assert await r.sample() is None  # still stuck: not called a second time
        assert probe.calls == 1
        assert r.hung is True
    finally:
        probe.release.set()
    await asyncio.wait_for(asyncio.shield(r._pending), 10)  # the stuck call returns (its result is stale)
    assert r.hung is False

    assert await r.sample() == "snap2"
    assert probe.calls == 2
    assert (r.hung, r.hung_since, r.error, r.last) == (False, None, None, "snap2")


async def test_async_probe(runners):
    probe = AsyncProbe(["a", RuntimeError("refused"), "b"])
    r = make(runners, probe)
    assert await r.sample() == "a"
    assert await r.sample() is None
    assert r.error == "refused"
    assert await r.sample() == "b"
    assert r.error is None
    assert r._executor is None  # coroutines run on the loop, no thread


async def test_async_probe_that_hangs_is_single_flight(runners):
    probe = AsyncProbe(["late", "fresh"])
    probe.gate = asyncio.Event()
    r = make(runners, probe, timeout=0.05)
    assert await r.sample() is None
    assert r.hung is True
    assert await r.sample() is None
    assert probe.calls == 1
    probe.gate.set()
    assert await asyncio.wait_for(asyncio.shield(r._pending), 10) == "late"
    assert r.hung is False
    assert await r.sample() == "fresh"
    assert probe.calls == 2
    assert r.error is None


async def test_an_optional_probe_that_never_answered_is_absent_not_degraded():
    from structlog.testing import capture_logs

    runner = ProbeRunner(SyncProbe([ConnectionRefusedError("refused"), ConnectionRefusedError("refused"), "snap",
                                    ConnectionRefusedError("refused")]), timeout=5, optional=True)
    with capture_logs() as logs:
        assert await runner.sample() is None
        assert await runner.sample() is None
        assert (runner.degraded, runner.absent, runner.error) == (False, True, "refused")  # `gpu` still says why
        assert await runner.sample() == "snap"  # it answered once: losing it now is worth an alert
        assert await runner.sample() is None
        assert (runner.degraded, runner.absent) == (True, False)
    said = [(e["log_level"], e["event"]) for e in logs]
    assert said == [("info", "nothing answers the probe; going on without it"),
                    ("info", "the probe answers; it is degraded if it stops"), ("error", "probe degraded")]
    runner.close()


async def test_a_probe_that_is_not_optional_is_degraded_from_its_first_failure():
    runner = ProbeRunner(SyncProbe([ConnectionRefusedError("refused")]), timeout=5)
    assert await runner.sample() is None
    assert runner.degraded and not runner.absent
    runner.close()
