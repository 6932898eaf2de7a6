import pytest

from memwarden.containers.history import RestartHistory
from memwarden.policies.remediation import Restart
from memwarden.state.db import open_state

GiB = 1 << 30


@pytest.fixture
def history(tmp_path):
    db = open_state(tmp_path / "state")
    yield RestartHistory(db)
    db.close()


def test_empty(history):
    assert history.of("web", 0) == []
    assert history.pending() == []
    assert history.recent() == []


def test_add_then_of_round_trip(history):
    row = history.add("web", "abc", 1000.0, "leak", 3 * GiB, False)
    assert isinstance(row, int)
    assert history.of("web", 0) == [Restart(1000.0, 3 * GiB, None, None, False)]
    (pending,) = history.pending()
    assert pending["id"] == row
    assert pending["container"] == "web" and pending["container_id"] == "abc"
    assert pending["reason"] == "leak" and pending["working_set_before"] == 3 * GiB


@pytest.mark.parametrize("ok", [True, False])
def test_verify_round_trip(history, ok):
    row = history.add("web", "abc", 1000.0, "leak", 3 * GiB, False)
    history.verify(row, GiB, ok)
    assert history.of("web", 0) == [Restart(1000.0, 3 * GiB, GiB, ok, False)]
    assert history.pending() == []
    (r,) = history.recent()
    assert r["effective"] == int(ok) and r["working_set_after"] == GiB


def test_dry_run_round_trip_and_never_pending(history):
    history.add("web", "abc", 1000.0, "leak", GiB, True)
    assert history.of("web", 0) == [Restart(1000.0, GiB, None, None, True)]
    assert history.pending() == []


def test_failed_restart_kept_in_recent_but_not_in_of_or_pending(history):
    history.add("web", "abc", 1000.0, "leak", GiB, False, error="RuntimeError('denied')")
    assert history.of("web", 0) == []
    assert history.pending() == []
    (r,) = history.recent()
    assert r["error"] == "RuntimeError('denied')"


def test_of_filters_by_container_and_since_and_orders_by_time(history):
    history.add("web", "a", 3000.0, "leak", 3, False)
    history.add("web", "a", 1000.0, "leak", 1, False)
    history.add("db", "b", 2000.0, "idle leak", 9, False)
    history.add("web", "a", 2000.0, "leak", 2, False)
    assert [r.working_set_before for r in history.of("web", 0)] == [1, 2, 3]
    assert [r.at for r in history.of("web", 2000.0)] == [2000.0, 3000.0]  # since is inclusive
    assert [r.working_set_before for r in history.of("db", 0)] == [9]
    assert history.of("nope", 0) == []


def test_recent_newest_first_with_limit(history):
    for i in range(5):
        history.add("web", "a", 1000.0 + i, "leak", i, False)
    assert [r["at"] for r in history.recent(3)] == [1004.0, 1003.0, 1002.0]
    assert len(history.recent()) == 5


def test_survives_reopening_the_database(tmp_path):
    db = open_state(tmp_path / "s")
    RestartHistory(db).add("web", "a", 1000.0, "leak", GiB, False)
    db.close()
    db = open_state(tmp_path / "s")
    try:
        assert RestartHistory(db).of("web", 0) == [Restart(1000.0, GiB)]
    finally:
        db.close()
