import pytest

from memwarden.arbiter.leases import ACTIVE_STATES, Lease, LeaseStore, may_manage
from memwarden.policies.lease_procs import LeaseProcs
from memwarden.state.db import open_state

GiB = 1024**3


@pytest.fixture
def db(tmp_path):
    database = open_state(tmp_path / "state")
    yield database
    database.close()


def lease(lease_id: str, granted_at: float, state: str = "active", **kw) -> Lease:
    fields = {"holder": "trainer", "pid": 4242, "uid": 1000, "gpu": 0, "size": 8 * GiB, "priority": 10,
              "preemptible": False}
    fields.update(kw)
    return Lease(id=lease_id, state=state, granted_at=granted_at, **fields)


def test_save_and_load_round_trip_every_field(db):
    original = lease("abcd1234", 100.0, preemptible=True, escalated=True,
                     evicted=[{"name": "llama3:latest", "keep_alive": "5m", "size_vram": 5 * GiB, "evicted_at": 99.5}])
    LeaseStore(db).save(original)
    [loaded] = LeaseStore(db).active()
    assert loaded == original
    assert loaded.preemptible is True and loaded.escalated is True
    assert loaded.evicted[0]["size_vram"] == 5 * GiB


def test_nullable_fields_round_trip(db):
    original = lease("n1", 1.0, pid=None, uid=None)
    store = LeaseStore(db)
    store.save(original)
    [loaded] = store.recent()
    assert (loaded.pid, loaded.uid, loaded.released_at, loaded.release_reason, loaded.downtime_s) == (
        None, None, None, None, None)
    assert (loaded.evicted, loaded.restored) == ([], [])


def test_save_again_updates_the_same_row(db):
    store = LeaseStore(db)
    item = lease("x", 10.0)
    store.save(item)
    item.state = "released"
    item.released_at = 20.0
    item.release_reason = "released by holder"
    item.restored = [{"name": "m", "ok": True, "restored_at": 21.0, "downtime_s": 11.0, "error": None}]
    item.downtime_s = 11.0
    store.save(item)
    assert db["leases"].count == 1
    assert store.active() == []
    [loaded] = store.recent()
    assert loaded == item
    assert loaded.active is False


def test_active_lists_active_states_in_grant_order(db):
    store = LeaseStore(db)
    store.save(lease("late", 30.0, "preempting"))
    store.save(lease("gone", 5.0, "released"))
    store.save(lease("early", 10.0, "evicting"))
    store.save(lease("mid", 20.0, "active"))
    assert [x.id for x in store.active()] == ["early", "mid", "late"]
    assert all(x.active for x in store.active())
    assert set(ACTIVE_STATES) == {"active", "preempting", "evicting"}


def test_recent_is_newest_first_and_limited(db):
    store = LeaseStore(db)
    for i in range(5):
        store.save(lease(f"l{i}", float(i), "released" if i % 2 else "active"))
    assert [x.id for x in store.recent()] == ["l4", "l3", "l2", "l1", "l0"]
    assert [x.id for x in store.recent(limit=2)] == ["l4", "l3"]


def test_leases_survive_reopening_the_database(tmp_path):
    first = open_state(tmp_path)
    LeaseStore(first).save(lease("keep", 1.0))
    first.close()
    second = open_state(tmp_path)
    try:
        assert [x.id for x in LeaseStore(second).active()] == ["keep"]
    finally:
        second.close()


def test_new_id_is_eight_hex_chars_and_varies():
    ids = {Lease.new_id() for _ in range(20)}
    assert len(ids) > 1
    assert all(len(i) == 8 and int(i, 16) >= 0 for i in ids)


def test_to_dict_has_every_field():
    d = lease("d", 1.0).to_dict()
    assert d["id"] == "d" and d["state"] == "active" and d["evicted"] == []


def test_the_leases_processes_round_trip(db):
    item = lease("p", 1.0, pid=200, holder_start=2000)
    assert item.set_procs(LeaseProcs(200, 2000, frozenset({(301, 3010), (300, 3000)}), frozenset({300})))
    assert not item.set_procs(LeaseProcs(200, 2000, frozenset({(300, 3000), (301, 3010)}), frozenset({300})))
    store = LeaseStore(db)
    store.save(item)
    [loaded] = store.active()
    assert loaded == item and loaded.members == [[300, 3000], [301, 3010]] and loaded.groups == [300]
    assert loaded.procs() == LeaseProcs(200, 2000, frozenset({(300, 3000), (301, 3010)}), frozenset({300}))
    assert lease("none", 1.0, pid=None).procs() is None


def test_only_the_owner_root_or_the_daemons_uid_may_end_a_lease():
    users = lease("u", 1.0, uid=1000)
    assert may_manage(users, 1000, daemon_uid=0)
    assert may_manage(users, 0, daemon_uid=0)
    assert may_manage(users, 998, daemon_uid=998), "the daemon's own uid stands in for root"
    assert not may_manage(users, 1001, daemon_uid=0)
    internal = lease("t", 1.0, uid=None)  # the daemon's own training lease
    assert not may_manage(internal, 1000, daemon_uid=0)
    assert may_manage(internal, 0, daemon_uid=0)
