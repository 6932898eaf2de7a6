import random

import pytest

from memwarden.containers.leak_store import BadLeakRow, LeakStore
from memwarden.policies import leak_scales
from memwarden.policies.leak import Sample
from memwarden.policies.leak_scales import LeakHistory, LeakSettings, verdict_of
from memwarden.state.db import open_state

MiB = 1 << 20
GiB = 1 << 30
HOUR = 3600.0
DAY = 24 * HOUR
DEFAULTS = LeakSettings.of(DAY, MiB / HOUR)  # containers.leak_window 24h, leak_min_rate 1MiB/h
CID = "c" * 64


@pytest.fixture
def db(tmp_path):
    db = open_state(tmp_path)
    yield db
    db.close()


def leaking(seconds: float, step: float = 2.0, settings: LeakSettings = DEFAULTS, seed: int = 3):
    """A history fed a 1 MB/s leak with 2 MiB of noise, and its verdicts judged with hysteresis."""
    rnd, history, verdict = random.Random(seed), LeakHistory(settings), None
    for i in range(int(seconds / step)):
        history.add(Sample(i * step, int(GiB + 1e6 * i * step + rnd.gauss(0, 2 * MiB))))
        verdict = verdict_of(history, verdict)
    return history, verdict


def test_a_saved_history_loads_back_exactly_with_its_verdict(db):
    history, verdict = leaking(120)
    assert verdict.leaking
    store = LeakStore(db)
    store.save("web", CID, history, verdict, 120.0)
    loaded, loaded_verdict = store.load("web", CID, DEFAULTS)
    assert loaded.state() == history.state() and loaded_verdict == verdict


def test_an_empty_history_and_no_verdict_load_back(db):
    store = LeakStore(db)
    store.save("web", CID, LeakHistory(DEFAULTS), None, 0.0)
    loaded, verdict = store.load("web", CID, DEFAULTS)
    assert loaded.state() == LeakHistory(DEFAULTS).state() and verdict is None


def test_another_container_id_or_other_settings_start_over(db):
    store = LeakStore(db)
    store.save("web", CID, leaking(60)[0], None, 60.0)
    assert store.load("web", "d" * 64, DEFAULTS) is None  # recreated under the same name
    assert store.load("web", CID, LeakSettings.of(HOUR, MiB / HOUR)) is None  # leak_window changed
    assert store.load("db", CID, DEFAULTS) is None


def test_a_history_cut_by_another_policy_shape_starts_over(db, monkeypatch):
    store = LeakStore(db)
    store.save("web", CID, leaking(60)[0], None, 60.0)
    monkeypatch.setattr(leak_scales, "BUCKETS", leak_scales.BUCKETS + 1)  # an upgrade that re-cut the buckets
    assert store.load("web", CID, DEFAULTS) is None


def test_a_second_save_replaces_the_first(db):
    store = LeakStore(db)
    store.save("web", CID, leaking(60)[0], None, 60.0)
    history, verdict = leaking(300)
    store.save("web", CID, history, verdict, 300.0)
    assert store.load("web", CID, DEFAULTS)[0].state() == history.state()
    assert db.execute("SELECT COUNT(*) FROM leak_scales").fetchone()[0] == len(DEFAULTS.scales)


def test_removed_and_absent_containers_lose_their_rows(db):
    store = LeakStore(db)
    for name in ("web", "db", "cache"):
        store.save(name, CID, leaking(30)[0], None, 30.0)
    store.remove("web")
    assert store.containers() == ["cache", "db"]
    assert store.keep_only(["db"]) == ["cache"]
    assert store.containers() == ["db"]
    assert db.execute("SELECT DISTINCT container FROM leak_scales").fetchall() == [("db",)]


def test_a_row_that_cannot_be_read_back_is_named(db):
    store = LeakStore(db)
    store.save("web", CID, leaking(30)[0], None, 30.0)
    db.execute("UPDATE leak_scales SET buckets = 'not json' WHERE container = 'web'")
    with pytest.raises(BadLeakRow, match="container web"):
        store.load("web", CID, DEFAULTS)


@pytest.mark.parametrize("rate", [10e6 / HOUR, -10e6 / HOUR])  # falling: the past's max queue is fullest
def test_seven_days_of_two_second_samples_stay_under_200_kb(db, rate):
    """The goal of issue 16: measured from the rows, at every simulated hour of a week (the largest is kept)."""
    store, rnd, history, largest = LeakStore(db), random.Random(5), LeakHistory(DEFAULTS), 0
    for i in range(int(7 * DAY / 2.0)):
        t = i * 2.0
        history.add(Sample(t, int(2 * GiB + rate * t + rnd.gauss(0, 2 * MiB))))
        if i % 1800 == 0:  # hourly
            verdict = verdict_of(history)
            store.save("web", CID, history, verdict, t)
            largest = max(largest, store.size("web"))
    assert history.count == 7 * 43_200
    assert 0 < largest <= 200_000


def test_a_row_saved_before_drops_and_the_young_fit_were_kept_resumes_without_them(db):
    history, verdict = leaking(120)
    store = LeakStore(db)
    store.save("web", CID, history, verdict, 120.0)
    db.execute("UPDATE leak_series SET drops = NULL, young = NULL")  # as schema 9 left it
    loaded, _ = store.load("web", CID, DEFAULTS)
    assert loaded.state().drops == () and loaded.state().young == ()
    assert loaded.state().scales == history.state().scales


def test_drops_and_the_young_fit_load_back(db):
    rnd, history = random.Random(1), LeakHistory(DEFAULTS)
    for i in range(300):  # a sawtooth: a drop every minute
        history.add(Sample(i * 2.0, int(GiB + (i % 30) * 10 * MiB + rnd.gauss(0, MiB))))
    assert history.state().drops and history.state().young
    store = LeakStore(db)
    store.save("web", CID, history, None, 600.0)
    assert store.load("web", CID, DEFAULTS)[0].state() == history.state()
