import asyncio

import pytest

from memwarden.config import parse_config
from memwarden.containers.serving import ServingCounter
from memwarden.containers.watch import SAVE_EVERY, ContainerWatch
from memwarden.policies.leak_scales import BUCKETS
from memwarden.snapshots import ContainerMemory, ContainersSnapshot
from memwarden.state.db import open_state

MiB = 1 << 20
KiB = 1 << 10
T0 = 50_000.0
LEAK_RATE = 8 * MiB  # per second: a fast leak (it doubles 100 MiB in 13 s), eighty times leak_min_rate (100KiB/s)
CID = "f" * 64


class FakeClock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRestart:
    def __init__(self, error: Exception | None = None):
        self.calls: list[tuple[str, float]] = []
        self.error = error

    def __call__(self, container_id: str, stop_timeout: float) -> None:
        self.calls.append((container_id, stop_timeout))
        if self.error is not None:
            raise self.error


def make_config(tmp_path, dry_run: bool = False, ollama_url: str = "", **containers):
    section = {"enabled": True, "leak_window": "20s", "leak_min_rate": "100KiB/s", "action": "restart",
               "verify_after": "5s", "restart_cooldown": "0s", "max_restarts_per_hour": 2, "stop_timeout": "7s"}
    section.update(containers)
    env = {"STATE_DIRECTORY": str(tmp_path / "state"), "RUNTIME_DIRECTORY": str(tmp_path / "run")}
    return parse_config({"daemon": {"dry_run": dry_run}, "ollama": {"url": ollama_url}, "containers": section},
                        env=env, uid=1000)


def container(ws: int, name: str = "web", cid: str = CID, limit: int = 0, labels=(), image: str = "app:1",
              source: str = "cgroup") -> ContainerMemory:
    return ContainerMemory(id=cid, name=name, image=image, working_set=ws, usage=ws + MiB, limit=limit,
                           rss=ws // 2, restart_count=0, compose_service="svc", labels=tuple(labels),
                           started_at="2024-05-01T10:00:00Z", source=source)


class Harness:
    def __init__(self, watch: ContainerWatch, clock: FakeClock, restart: FakeRestart, db):
        self.watch, self.clock, self.restart, self.db = watch, clock, restart, db

    async def step(self, *containers: ContainerMemory, dt: float = 1.0, host_available: int | None = None):
        """One sample pass dt seconds after the last; waits for any restart it started."""
        self.clock.now += dt
        conditions = await self.watch.act(ContainersSnapshot(self.clock.now, tuple(containers), 2), host_available)
        await self.settle()
        return conditions

    async def settle(self):
        tasks = list(self.watch._tasks)
        if tasks:
            await asyncio.gather(*tasks)

    async def leak_until_restarted(self, base: int = 100 * MiB, limit: int = 0, max_passes: int = 40, **kw):
        """Feed a steady leak one pass a second until a restart is recorded; returns the leak conditions seen."""
        seen = []
        rows_before = len(self.watch.history.recent())
        for i in range(max_passes):
            conditions = await self.step(container(base + LEAK_RATE * i, limit=limit, **kw))
            seen.append(conditions)
            if len(self.watch.history.recent()) > rows_before:
                return seen
        pytest.fail("no restart after a steady leak")


@pytest.fixture
def make(tmp_path):
    made = []

    def factory(dry_run: bool = False, restart_error: Exception | None = None, read_models=None,
                ollama_url: str = "", **containers):
        db = open_state(tmp_path / f"state{len(made)}")
        clock = FakeClock()
        restart = FakeRestart(restart_error)
        extra = {} if read_models is None else {"serving": ServingCounter(read_models)}
        watch = ContainerWatch(make_config(tmp_path, dry_run, ollama_url, **containers), db, restart, clock=clock,
                               **extra)
        h = Harness(watch, clock, restart, db)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.db.close()


@pytest.fixture
async def closing(make):
    harnesses = []

    def factory(**kw):
        h = make(**kw)
        harnesses.append(h)
        return h

    yield factory
    for h in harnesses:
        await h.watch.close()


def kinds(conditions) -> list[str]:
    return [c.kind for c in conditions]


# ---- leak → condition + restart ----------------------------------------------------------------------------

async def test_steady_leak_raises_condition_and_restarts(closing):
    h = closing()
    passes = await h.leak_until_restarted()
    # warming for the first 80 % of the shortest scale (10 s of the 10 s and 20 s ones), then a leak: 9 passes
    assert len(passes) == 9
    assert all(c == [] for c in passes[:-1])
    (cond,) = passes[-1]
    assert cond.kind == "container.leak" and cond.key == "web"
    assert cond.severity == "warning"  # no limit and no host figure: no exhaustion time
    assert "leaking" in cond.message and "no memory limit" in cond.message
    assert cond.fields["slope_bps"] == pytest.approx(LEAK_RATE, rel=0.02)
    assert cond.fields["min_rate_bps"] == pytest.approx(100 * KiB)
    assert cond.fields["window_s"] == 20.0 and cond.fields["scale_s"] == 10.0 and "over 10s" in cond.message
    assert cond.fields["exhaustion_in_s"] is None

    assert h.restart.calls == [(CID, 7.0)]
    (row,) = h.watch.history.recent()
    assert row["container"] == "web" and row["container_id"] == CID
    assert row["at"] == h.clock.now
    assert row["reason"] == "leak"
    assert row["working_set_before"] == 100 * MiB + 8 * LEAK_RATE
    assert row["dry_run"] == 0 and row["error"] is None and row["effective"] is None
    assert "web" not in h.watch.series  # a new process: growth measured from scratch
    assert h.watch._busy == set()


async def test_leak_close_to_the_limit_is_critical(closing):
    h = closing(action="alert")
    limit = 100 * MiB + 50 * LEAK_RATE
    passes = await _feed_leak(h, 17, limit=limit)
    (cond,) = passes[-1]
    assert cond.severity == "critical"
    assert cond.fields["exhaustion_of"] == "limit"
    assert cond.fields["exhaustion_in_s"] == pytest.approx((limit - (100 * MiB + 16 * LEAK_RATE)) / LEAK_RATE, abs=2)
    assert "its limit exhausted in" in cond.message


async def test_leak_projected_on_host_ram(closing):
    h = closing(action="alert")
    h_avail = 2048 * LEAK_RATE
    for i in range(17):
        conditions = await h.step(container(100 * MiB + LEAK_RATE * i), host_available=h_avail)
    (cond,) = conditions
    assert cond.fields["exhaustion_of"] == "host"
    assert cond.fields["exhaustion_in_s"] == pytest.approx(2048, rel=0.03)
    assert cond.severity == "critical"  # ~34 minutes
    assert "host RAM exhausted in" in cond.message


async def _feed_leak(h, passes: int, limit: int = 0, **kw):
    return [await h.step(container(100 * MiB + LEAK_RATE * i, limit=limit, **kw)) for i in range(passes)]


async def test_action_alert_raises_condition_without_restarting(closing):
    h = closing(action="alert")
    passes = await _feed_leak(h, 25)
    assert kinds(passes[-1]) == ["container.leak"]
    assert h.restart.calls == []
    assert h.watch.history.recent() == []


async def test_label_alert_overrides_configured_restart(closing):
    h = closing()
    passes = await _feed_leak(h, 25, labels=(("memwarden.action", "alert"),))
    assert kinds(passes[-1]) == ["container.leak"]
    assert h.restart.calls == []


async def test_label_ignore_no_condition_no_restart(closing):
    h = closing()
    passes = await _feed_leak(h, 25, labels=(("memwarden.action", "ignore"),))
    assert all(c == [] for c in passes)
    assert h.restart.calls == []
    assert h.watch.history.recent() == []
    (row,) = h.watch.rows()
    assert row["action"] == "ignore"
    assert row["verdict"] == "leak"  # still judged, only not acted on


async def test_bad_label_uses_the_configured_action(closing):
    h = closing()
    await h.leak_until_restarted(labels=(("memwarden.action", "reboot"),))
    assert len(h.restart.calls) == 1


async def test_steady_container_no_condition_no_restart(closing):
    h = closing()
    passes = [await h.step(container(300 * MiB)) for _ in range(30)]
    assert all(c == [] for c in passes)
    assert h.restart.calls == []
    assert h.watch.series["web"].verdict.verdict == "steady"


# ---- verification ------------------------------------------------------------------------------------------

async def test_effective_restart_is_verified_after_verify_after(closing):
    h = closing()
    await h.leak_until_restarted()
    restarted_at = h.clock.now
    for _ in range(4):  # 1..4 s after: too early
        assert await h.step(container(10 * MiB)) == []
        assert h.watch.history.recent()[0]["effective"] is None
    assert await h.step(container(10 * MiB)) == []  # 5 s after
    (row,) = h.watch.history.recent()
    assert h.clock.now - restarted_at == 5.0
    assert row["effective"] == 1
    assert row["working_set_after"] == 10 * MiB
    assert h.watch.history.pending() == []
    assert h.watch.history.of("web", 0)[-1].effective is True


async def test_ineffective_restart_yields_a_condition(closing):
    h = closing()
    await h.leak_until_restarted()
    before = h.watch.history.recent()[0]["working_set_before"]
    for _ in range(4):
        assert await h.step(container(before)) == []
    conditions = await h.step(container(before))
    (row,) = h.watch.history.recent()
    assert row["effective"] == 0
    assert row["working_set_after"] == before
    (cond,) = conditions
    assert cond.kind == "container.restart_ineffective" and cond.key == "web"
    assert cond.severity == "warning"
    assert "did not help" in cond.message
    assert cond.fields["working_set_before"] == before
    assert cond.fields["working_set_after"] == before
    assert cond.fields["restarted_at"] == row["at"]
    # it stays raised on the next pass
    assert kinds(await h.step(container(before))) == ["container.restart_ineffective"]


async def test_verification_waits_for_the_container_to_be_back(closing):
    h = closing()
    await h.leak_until_restarted()
    for _ in range(8):
        await h.step()  # not in the snapshot (still starting)
    assert h.watch.history.recent()[0]["effective"] is None
    await h.step(container(5 * MiB))
    assert h.watch.history.recent()[0]["effective"] == 1


async def test_restart_budget_per_hour(closing):
    h = closing()  # max_restarts_per_hour = 2, cooldown 0
    await h.leak_until_restarted()
    await h.leak_until_restarted()
    assert len(h.restart.calls) == 2
    # a third leak: alerted, not restarted
    passes = await _feed_leak(h, 30)
    assert "container.leak" in kinds(passes[-1])
    assert len(h.restart.calls) == 2
    assert len(h.watch.history.recent()) == 2


async def test_a_withheld_restart_is_said_in_the_alert_and_logged_once_with_its_numbers(closing):
    from structlog.testing import capture_logs

    h = closing()  # max_restarts_per_hour = 2, cooldown 0
    await h.leak_until_restarted()
    await h.leak_until_restarted()
    with capture_logs() as logs:
        passes = await _feed_leak(h, 30)
    [leak] = [c for c in passes[-1] if c.kind == "container.leak"]
    assert leak.message.endswith("; no restart: restart budget spent (2 of 2 in the last hour)")
    assert leak.fields["remediation"] == "leak; restart budget spent (2 of 2 in the last hour)"
    withheld = [e for e in logs if e.get("decision") == "container.withheld"]
    assert len(withheld) == 1, "logged once per reason, not every pass"
    assert withheld[0]["why"] == "budget_spent" and withheld[0]["restarts_last_hour"] == 2
    assert withheld[0]["max_per_hour"] == 2 and withheld[0]["problem"] == "leak"


async def test_an_alert_only_container_says_nothing_about_restarts(closing):
    h = closing(action="alert")
    passes = await _feed_leak(h, 25)
    [leak] = passes[-1]
    assert "no restart" not in leak.message and "remediation" not in leak.fields


async def test_failed_restart_is_recorded_and_not_fatal(closing):
    h = closing(restart_error=RuntimeError("permission denied"))
    passes = await _feed_leak(h, 9)
    assert kinds(passes[-1]) == ["container.leak"]
    assert len(h.restart.calls) == 1
    (row,) = h.watch.history.recent()
    assert "permission denied" in row["error"]
    assert h.watch.history.pending() == []
    assert h.watch._busy == set()
    assert "web" in h.watch.series  # not restarted: the series goes on


async def test_failing_restart_is_not_retried_beyond_the_budget(closing):
    """max_restarts_per_hour caps attempts: a restart that keeps failing must not be retried on every pass."""
    h = closing(restart_error=RuntimeError("permission denied"))  # budget 2 per hour
    await _feed_leak(h, 30)
    assert len(h.restart.calls) <= 2, f"{len(h.restart.calls)} restart attempts in 14 s with a budget of 2/h"


# ---- dry run -----------------------------------------------------------------------------------------------

async def test_dry_run_records_a_row_without_restarting(closing):
    h = closing(dry_run=True)
    passes = await _feed_leak(h, 9)
    assert kinds(passes[-1]) == ["container.leak"]
    assert h.restart.calls == []
    rows = h.watch.history.recent()
    assert len(rows) == 1
    assert rows[0]["dry_run"] == 1 and rows[0]["reason"] == "leak"
    assert h.watch.history.pending() == []  # nothing to verify
    assert "web" in h.watch.series


async def test_dry_run_follows_the_budget_like_a_real_run(closing):
    """A dry run says what a real run would do: two restarts an hour, not one logged row per pass."""
    h = closing(dry_run=True)  # budget 2 per hour, cooldown 0
    passes = await _feed_leak(h, 30)
    assert all(kinds(p) == ["container.leak"] for p in passes[16:])
    assert h.restart.calls == []
    rows = h.watch.history.recent()
    assert [r["dry_run"] for r in rows] == [1, 1]


async def test_direct_restart_in_dry_run(closing):
    h = closing(dry_run=True)
    result = await h.watch.restart(container(MiB), "asked by an operator")
    assert result["dry_run"] is True and result["restarted"] is False
    assert h.restart.calls == []
    assert h.watch.history.recent()[0]["id"] == result["id"]


async def test_direct_restart(closing):
    h = closing()
    result = await h.watch.restart(container(MiB), "asked by an operator")
    assert result == {"container": "web", "restarted": True, "dry_run": False, "id": result["id"]}
    assert h.restart.calls == [(CID, 7.0)]


# ---- series bookkeeping ------------------------------------------------------------------------------------

async def test_disappeared_container_is_dropped(closing):
    h = closing(action="alert")
    await h.step(container(MiB, name="a", cid="1"), container(MiB, name="b", cid="2"))
    await h.step(container(MiB, name="a", cid="1"), container(MiB, name="b", cid="2"))
    assert set(h.watch.series) == {"a", "b"}
    await h.step(container(MiB, name="b", cid="2"))
    assert set(h.watch.series) == {"b"}
    assert h.watch.series["b"].history.count == 3


async def test_recreated_container_starts_a_new_series(closing):
    h = closing(action="alert")
    for _ in range(5):
        await h.step(container(MiB, cid="old"))
    assert h.watch.series["web"].history.count == 5
    await h.step(container(MiB, cid="new"))
    s = h.watch.series["web"]
    assert s.container_id == "new"
    assert s.history.count == 1


async def test_recreated_container_does_not_inherit_a_leak(closing):
    h = closing(action="alert")
    passes = await _feed_leak(h, 17)
    assert kinds(passes[-1]) == ["container.leak"]
    assert await h.step(container(500 * MiB, cid="new")) == []
    assert h.watch.series["web"].verdict.verdict == "warming"


async def test_series_bounded_per_scale(closing):
    h = closing(action="alert")
    for _ in range(200):
        await h.step(container(MiB))
    history = h.watch.series["web"].history
    assert history.count == 200
    assert [s.scale for s in history.scales] == [10.0, 20.0]  # the ladder's rungs under leak_window, and it
    for s in history.scales:
        assert len(s.buckets) <= BUCKETS + 1 and h.clock.now - s.buckets[0][0] <= s.scale + s.width


# ---- rows --------------------------------------------------------------------------------------------------

async def test_rows_empty_before_the_first_pass(closing):
    assert closing().watch.rows() == []


async def test_rows_fields(closing):
    h = closing(action="alert")
    await _feed_leak(h, 17, limit=4096 * MiB)
    await h.step(container(300 * MiB, name="calm", cid="c" * 64, source="api"),
                 container(100 * MiB + 17 * LEAK_RATE, limit=4096 * MiB))
    rows = {r["name"]: r for r in h.watch.rows()}
    web = rows["web"]
    assert web["id"] == CID[:12]
    assert web["image"] == "app:1"
    assert web["compose_service"] == "svc"
    assert web["working_set"] == 100 * MiB + 17 * LEAK_RATE
    assert web["usage"] == web["working_set"] + MiB
    assert web["rss"] == web["working_set"] // 2
    assert web["limit"] == 4096 * MiB and web["no_limit"] is False
    assert web["restart_count"] == 0
    assert web["action"] == "alert"
    assert web["verdict"] == "leak"
    assert web["slope_bps"] == pytest.approx(LEAK_RATE, rel=0.02)
    assert web["exhaustion_of"] == "limit"
    assert web["exhaustion_in_s"] > 0
    assert web["models_loaded"] is None
    assert web["source"] == "cgroup"

    calm = rows["calm"]
    assert calm["verdict"] == "warming"
    assert calm["no_limit"] is True
    assert calm["source"] == "api"
    assert calm["exhaustion_in_s"] is None and calm["exhaustion_of"] is None
    assert set(web) == set(calm) == {
        "name", "id", "image", "compose_service", "working_set", "usage", "rss", "limit", "no_limit",
        "restart_count", "restarts", "restarts_24h", "action", "verdict", "slope_bps", "scale_s", "exhaustion_in_s",
        "exhaustion_of", "models_loaded", "source"}


# ---- idle leak ---------------------------------------------------------------------------------------------

async def test_idle_leak_condition(closing):
    async def no_models(url, timeout):
        return 0

    h = closing(action="alert", idle_leak_threshold="1GiB", read_models=no_models, ollama_url="http://127.0.0.1:11434")
    (cond,) = await h.step(container(2048 * MiB, image="ollama/ollama"))
    assert cond.kind == "container.idle_leak"
    assert "no model loaded" in cond.message
    assert h.watch.rows()[0]["verdict"] == "idle leak"
    assert h.watch.rows()[0]["models_loaded"] == 0


# ---- leak history across a daemon restart (containers/leak_store.py) ---------------------------------------

def _leak_ws(i: int) -> int:
    # A 1 MiB/s leak with a few KiB of deterministic wobble, then flat: called, then held, then released.
    return 100 * MiB + LEAK_RATE * min(i, 25) + (i * 7919 % 13) * 4 * KiB


async def _verdicts(tmp_path, name: str, passes: int, restart_at: set[int]) -> list:
    """Feed the series to a watch, replacing it by a new one over the same state file (the daemon restarting:
    the old one closed, the new one built on a reopened database) before each pass in restart_at."""
    config = make_config(tmp_path, action="alert")
    clock, db = FakeClock(), open_state(tmp_path / name)
    watch = ContainerWatch(config, db, FakeRestart(), clock=clock)
    out = []
    for i in range(passes):
        if i in restart_at:
            await watch.close()
            db.close()
            db = open_state(tmp_path / name)
            watch = ContainerWatch(config, db, FakeRestart(), clock=clock)
        clock.now += 1.0
        await watch.act(ContainersSnapshot(clock.now, (container(_leak_ws(i)),), 2), None)
        s = watch.series["web"]
        out.append((s.verdict, s.history.state()))
    await watch.close()
    db.close()
    return out


async def test_verdicts_are_unchanged_across_daemon_restarts_mid_leak(tmp_path):
    straight = await _verdicts(tmp_path, "straight", 70, set())
    kinds_seen = [v.verdict for v, _ in straight]
    assert "leak" in kinds_seen and kinds_seen[-1] != "leak", "the series must be called, then released"
    first_leak = kinds_seen.index("leak")
    restarted = await _verdicts(tmp_path, "restarted", 70, {5, first_leak, first_leak + 1, 40})
    assert restarted == straight


async def test_a_crash_resumes_from_the_last_periodic_save(make):
    h = make(action="alert")
    for i in range(SAVE_EVERY + 3):  # first seen at pass 1, saved at pass 1 + SAVE_EVERY
        await h.step(container(100 * MiB + i * KiB))
    again = ContainerWatch(h.watch.config, h.db, FakeRestart(), clock=h.clock)  # no close(): a crash
    h.clock.now += 1.0
    await again.act(ContainersSnapshot(h.clock.now, (container(100 * MiB),), 2), None)
    assert again.series["web"].history.count == SAVE_EVERY + 2


async def test_a_removed_container_loses_its_stored_history(closing):
    h = closing()
    for _ in range(SAVE_EVERY + 2):  # one history saved a pass: both saved by then
        await h.step(container(100 * MiB), container(50 * MiB, name="db", cid="d" * 64))
    assert h.watch.leaks.containers() == ["db", "web"]
    await h.step(container(100 * MiB))
    assert h.watch.leaks.containers() == ["web"]


async def test_a_container_gone_while_the_daemon_was_down_loses_its_stored_history(make):
    h = make()
    await h.step(container(100 * MiB), container(50 * MiB, name="db", cid="d" * 64))
    await h.watch.close()
    assert h.watch.leaks.containers() == ["db", "web"]
    again = ContainerWatch(h.watch.config, h.db, FakeRestart(), clock=h.clock)
    h.clock.now += 1.0
    await again.act(ContainersSnapshot(h.clock.now, (container(100 * MiB),), 2), None)
    assert again.leaks.containers() == ["web"] and again.series["web"].history.count == 2


async def test_a_recreated_container_or_new_leak_settings_start_a_new_history(make, tmp_path):
    h = make()
    await h.step(container(100 * MiB))
    await h.watch.close()
    recreated = ContainerWatch(h.watch.config, h.db, FakeRestart(), clock=h.clock)
    h.clock.now += 1.0
    await recreated.act(ContainersSnapshot(h.clock.now, (container(100 * MiB, cid="e" * 64),), 2), None)
    assert recreated.series["web"].history.count == 1
    await recreated.close()
    config = make_config(tmp_path, leak_window="1h")
    rewindowed = ContainerWatch(config, h.db, FakeRestart(), clock=h.clock)
    h.clock.now += 1.0
    await rewindowed.act(ContainersSnapshot(h.clock.now, (container(100 * MiB, cid="e" * 64),), 2), None)
    assert rewindowed.series["web"].history.count == 1


async def test_a_restarted_container_loses_its_stored_history(closing):
    h = closing(action="restart")
    for i in range(SAVE_EVERY):
        await h.step(container(100 * MiB + (LEAK_RATE * i if i > SAVE_EVERY - 20 else 0)))
        if h.restart.calls:
            break
    assert h.restart.calls, "the leak was not restarted"
    assert "web" not in h.watch.leaks.containers()


async def test_a_container_whose_memory_is_unread_keeps_its_series_and_stored_history(closing):
    h = closing()
    for _ in range(SAVE_EVERY + 2):
        await h.step(container(100 * MiB), container(50 * MiB, name="db", cid="d" * 64))
    h.clock.now += 1.0
    await h.watch.act(ContainersSnapshot(h.clock.now, (container(100 * MiB),), 2, frozenset({"db"})), None)
    assert h.watch.leaks.containers() == ["db", "web"]
    assert h.watch.series["db"].history.count == SAVE_EVERY + 2


async def test_a_first_pass_that_reads_no_memory_wipes_no_stored_history(make):
    h = make()
    await h.step(container(100 * MiB), container(50 * MiB, name="db", cid="d" * 64))
    await h.watch.close()
    again = ContainerWatch(h.watch.config, h.db, FakeRestart(), clock=h.clock)
    h.clock.now += 1.0
    await again.act(ContainersSnapshot(h.clock.now, (), 2, frozenset({"db", "web"})), None)
    assert again.leaks.containers() == ["db", "web"]
    h.clock.now += 1.0
    await again.act(ContainersSnapshot(h.clock.now, (container(100 * MiB),), 2, frozenset({"db"})), None)
    assert again.series["web"].history.count == 2
    await again.close()
