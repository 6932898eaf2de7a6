"""The memory store: all-or-nothing imports, staged imports, listing, routing at insert, consolidation."""

from __future__ import annotations

import sqlite3

import pytest

from memwarden.config.routes import Route
from memwarden.learning import store as store_mod
from memwarden.learning.records import BadRecord
from memwarden.learning.store import ImportRejected, ImportSessionError, MemoryNotFound, MemoryStore
from memwarden.state.db import open_state

from .conftest import line


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db(tmp_path):
    database = open_state(tmp_path)
    yield database
    database.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(db, clock):
    return MemoryStore(db, clock=clock)


# ---- add, list, count, show ------------------------------------------------------------------------------

def test_add_and_show(store, clock):
    mid = store.add("alice", "conversation", "hello?", "hi!", importance=4)
    row = store.show(mid)
    assert row == {"id": mid, "profile": "alice", "kind": "conversation", "content": "hello?", "response": "hi!",
                   "importance": 4, "created_at": clock.t, "adapter": "alice", "consolidated_run": None,
                   "consolidated_at": None, "cue": None, "title": None, "tags": None, "prompt": None,
                   "chosen": None, "rejected": None, "cue_key": None, "superseded_by": None}
    with pytest.raises(MemoryNotFound, match="no memory with id 999"):
        store.show(999)
    with pytest.raises(BadRecord, match="importance must be"):
        store.add("alice", "dream", "x", importance=12)
    assert store.total() == 1


def test_list_filters_orders_and_pages(store, clock):
    for i in range(6):
        clock.t = 100.0 + i
        store.add("alice" if i % 2 else "bob", "dream" if i < 3 else "journal", f"m{i}", importance=1 + i)
    assert [m["content"] for m in store.rows()] == ["m5", "m4", "m3", "m2", "m1", "m0"]
    assert [m["content"] for m in store.rows(profile="alice")] == ["m5", "m3", "m1"]
    assert [m["content"] for m in store.rows(profile="alice", kind="dream")] == ["m1"]
    assert [m["content"] for m in store.rows(limit=2, offset=1)] == ["m4", "m3"]
    assert store.total(adapter="bob") == 3
    counts = store.count()
    assert counts["total"] == 6 and counts["unconsolidated"] == 6
    by = {(g["profile"], g["kind"]): g for g in counts["groups"]}
    assert by[("alice", "journal")]["memories"] == 2
    assert by[("alice", "journal")]["importance"] == 4 + 6
    assert store.count(profile="bob")["total"] == 3
    assert store.unconsolidated_importance() == {
        "alice": {"profile": "alice", "importance": 2 + 4 + 6, "count": 3},
        "bob": {"profile": "bob", "importance": 1 + 3 + 5, "count": 3}}


# ---- imports ---------------------------------------------------------------------------------------------

def test_import_validates_every_line_first_and_reports_all_bad_ones(store):
    lines = [line(), line(importance=11), "", "{broken", line(profile=None), line()]
    with pytest.raises(ImportRejected) as info:
        store.import_lines(lines)
    assert [n for n, _ in info.value.errors] == [2, 4, 5]
    assert info.value.errors[0][1] == "importance must be a whole number 1–10, got 11"
    assert "profile is missing" in info.value.errors[2][1]
    assert "3 bad lines, nothing imported" in str(info.value)
    assert store.total() == 0


def test_import_inserts_everything_in_file_order(store):
    lines = [line(content=f"memory {i}", profile="alice" if i % 3 else "bob") for i in range(50)]
    result = store.import_lines([*lines[:10], "", *lines[10:]])
    assert result == {"imported": 50, "by_adapter": {"alice": 33, "bob": 17}}
    rows = store.for_adapter("alice", consolidated=False) + store.for_adapter("bob", consolidated=False)
    assert [r["content"] for r in sorted(rows, key=lambda r: r["id"])] == [f"memory {i}" for i in range(50)]


def test_a_failure_during_insert_leaves_nothing_half_imported(store, db, monkeypatch):
    monkeypatch.setattr(store_mod, "BATCH", 2)
    db.execute("CREATE TEMP TRIGGER boom BEFORE INSERT ON memories WHEN NEW.content = 'boom' "
               "BEGIN SELECT RAISE(ABORT, 'boom'); END")
    lines = [line(content=f"m{i}") for i in range(7)] + [line(content="boom")]
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        store.import_lines(lines)
    assert store.total() == 0


def test_staged_import_across_chunks(store, db):
    token = store.begin_import()
    assert store.stage(token, [line(content="a"), ""], 1)["staged"] == 1
    assert store.total() == 0  # staged is not imported
    res = store.stage(token, [line(content="b", profile="bob"), line(content="c")], 3)
    assert res == {"lines": 2, "staged": 3, "bad": [], "bad_count": 0}
    assert store.commit_import(token, total_lines=4) == {"imported": 3, "by_adapter": {"alice": 2, "bob": 1}}
    assert [m["content"] for m in store.rows()][::-1] == ["a", "b", "c"]
    assert not [r for r in db.execute("SELECT name FROM sqlite_temp_master WHERE type = 'table'")]
    with pytest.raises(ImportSessionError, match="no import in progress"):
        store.stage(token, [line()], 5)


def test_staged_import_with_a_bad_line_reports_file_line_numbers_and_imports_nothing(store):
    token = store.begin_import()
    store.stage(token, [line(), line()], 1)
    res = store.stage(token, [line(), line(importance=0), line(kind="")], 3)
    assert res["bad"] == [(4, "importance must be a whole number 1–10, got 0"),
                          (5, "kind must be a non-empty string of at most 64 printable characters, got ''")]
    assert res["bad_count"] == 2
    store.stage(token, [line()], 6)
    with pytest.raises(ImportRejected) as info:
        store.commit_import(token)
    assert [n for n, _ in info.value.errors] == [4, 5]
    assert store.total() == 0
    with pytest.raises(ImportSessionError):
        store.commit_import(token)  # the session is gone


def test_staged_import_refuses_gaps_and_missing_chunks(store):
    token = store.begin_import()
    store.stage(token, [line(), line()], 1)
    with pytest.raises(ImportSessionError, match="chunk starts at line 5, expected line 3"):
        store.stage(token, [line()], 5)
    with pytest.raises(ImportSessionError, match="2 lines were sent, not 3; nothing imported"):
        store.commit_import(token, total_lines=3)
    assert store.total() == 0


def test_staged_imports_abort_expire_and_are_limited(store, clock, monkeypatch):
    token = store.begin_import()
    store.stage(token, [line()], 1)
    assert store.abort_import(token) == {"aborted": True, "staged": 1, "bad_count": 0}
    assert store.total() == 0
    monkeypatch.setattr(store_mod, "MAX_IMPORTS", 2)
    store.begin_import()
    store.begin_import()
    with pytest.raises(ImportSessionError, match="2 imports are already in progress"):
        store.begin_import()
    clock.t += store_mod.IMPORT_IDLE_TIMEOUT + 1
    store.begin_import()  # the idle ones were dropped
    assert len(store._sessions) == 1


def test_staged_errors_are_capped_but_counted(store, monkeypatch):
    monkeypatch.setattr(store_mod, "MAX_REPORTED", 3)
    token = store.begin_import()
    res = store.stage(token, ["x"] * 5, 1)
    assert len(res["bad"]) == 3 and res["bad_count"] == 5
    with pytest.raises(ImportRejected) as info:
        store.commit_import(token)
    assert info.value.bad_count == 5 and len(info.value.errors) == 3


# ---- routing and profile isolation -----------------------------------------------------------------------

ROUTES = (
    Route("alice-dreams", ("alice",), ("dream",)),  # owned by alice
    Route("dreams", (), ("dream",)),  # any profile: qualified
    Route("shared", ("bob", "carol"), ()),  # two profiles: qualified
    Route("dave", ("erin",), ()),  # owned by erin, named like another profile
)


def test_routes_apply_at_insert_and_the_store_keeps_profiles_apart(store):
    store.routes = ROUTES
    store.import_lines([line(profile=p, kind=k) for p in ("alice", "bob", "carol", "dave", "erin")
                        for k in ("dream", "journal")])
    assert store.mixed_adapters() == {}
    assert set(store.adapters()) == {"alice-dreams", "alice", "dreams@bob", "shared@bob", "dreams@carol",
                                     "shared@carol", "dreams@dave", "dave@dave", "dreams@erin", "dave"}
    store.routes = ()  # changing the routes moves nothing already stored
    assert store.total(adapter="alice-dreams") == 1
    assert store.show(store.add("alice", "dream", "new", importance=1))["adapter"] == "alice"


# ---- consolidation ---------------------------------------------------------------------------------------

def test_mark_consolidated_only_once(store, db, clock):
    ids = [store.add("alice", "dream", f"d{i}", importance=10) for i in range(4)]
    assert store.mark_consolidated(ids[:2], "run-1") == 2
    assert store.mark_consolidated(ids, "run-2") == 2  # the first two keep run-1
    assert [store.show(i)["consolidated_run"] for i in ids] == ["run-1", "run-1", "run-2", "run-2"]
    assert store.show(ids[0])["consolidated_at"] == clock.t
    assert store.mark_consolidated(ids, "run-3") == 0
    with pytest.raises(sqlite3.IntegrityError, match="already consolidated by another run"):
        db.execute("UPDATE memories SET consolidated_run = 'run-9' WHERE id = ?", [ids[0]])
    assert store.unconsolidated_importance() == {}
    assert store.total(consolidated=True) == 4


def test_mark_consolidated_inside_the_callers_transaction(store, db):
    ids = [store.add("alice", "dream", f"d{i}", importance=10) for i in range(3)]
    with pytest.raises(RuntimeError), db.atomic():
        db["runs"].insert({"id": "run-1", "adapter": "alice", "profile": "alice", "state": "promoted",
                           "created_at": 1.0, "promoted": 1})
        assert store.mark_consolidated(ids, "run-1", at=5.0, conn=db) == 3
        raise RuntimeError("promotion failed after marking")
    assert store.total(consolidated=True) == 0 and db["runs"].count == 0  # rolled back together
    with db.atomic():
        db["runs"].insert({"id": "run-1", "adapter": "alice", "profile": "alice", "state": "promoted",
                           "created_at": 1.0, "promoted": 1})
        assert store.mark_consolidated(ids, "run-1", at=5.0, conn=db.conn) == 3
    assert store.total(consolidated=True) == 3
    assert store.unconsolidated_importance() == {}


# ---- cues, preferences and updates -----------------------------------------------------------------------

def test_cue_title_tags_and_a_preference_are_stored(store):
    store.import_lines([line(cue="my godson Zeno", title="Zeno", tags=["family", "Zeno"]),
                        line(kind="preference", content=None, prompt="Tea?", chosen="Yes.", rejected="No.")])
    zeno, tea = sorted(store.rows(), key=lambda r: r["id"])
    assert store.show(zeno["id"])["tags"] == ["family", "Zeno"]
    assert (zeno["cue"], zeno["title"], zeno["cue_key"]) == ("my godson Zeno", "Zeno", "my godson zeno")
    assert (tea["content"], tea["prompt"], tea["chosen"], tea["rejected"]) == ("Tea?", "Tea?", "Yes.", "No.")
    assert tea["cue_key"] is None


def test_a_bad_preference_line_is_reported_by_its_number_beside_the_other_bad_lines(store):
    lines = [line(), line(kind="preference", prompt="Tea?", chosen="Yes."), line(importance=0),
             line(kind="preference", prompt="Tea?", chosen="Yes", rejected=" yes "), line(cue="")]
    with pytest.raises(ImportRejected) as info:
        store.import_lines(lines)
    assert [(n, m.split(" (")[0].split(":")[0]) for n, m in info.value.errors] == [
        (2, "rejected is missing"), (3, "importance must be a whole number 1–10, got 0"),
        (4, "chosen and rejected are the same text"), (5, "cue must be a non-empty line of at most 200 printable "
                                                          "characters, got ''")]
    assert store.total() == 0


def superseded(store):
    return {r["content"]: r["superseded_by"] for r in store.rows(limit=100)}


def test_a_newer_memory_with_the_same_cue_supersedes_the_older_in_its_profile(store, clock):
    first = store.add("alice", "journal", "Zeno lives in Tbilisi.", importance=5, cue="my godson Zeno")
    store.add("bob", "journal", "Bob's Zeno.", importance=5, cue="my godson Zeno")  # another profile
    store.add("alice", "journal", "No cue, same words.", importance=5, tags=["my godson Zeno"])
    clock.t += 10
    second = store.import_lines([line(content="Zeno moved to Batumi.", cue="My godson  ZENO", importance=7)])
    assert second["imported"] == 1
    newest = max(r["id"] for r in store.rows())
    assert superseded(store) == {"Zeno lives in Tbilisi.": newest, "Bob's Zeno.": None,
                                 "No cue, same words.": None, "Zeno moved to Batumi.": None}
    assert store.unconsolidated_importance()["alice"] == {"profile": "alice", "importance": 12, "count": 2}
    counts = store.count(profile="alice")
    assert counts["superseded"] == 1 and counts["unconsolidated"] == 2
    assert store.show(first)["superseded_by"] == newest


def test_a_late_import_of_an_older_memory_is_superseded_by_the_newer_one(store, db, clock):
    token = store.begin_import()
    store.stage(token, [line(content="red car", title="the car", created_at=2000.0),
                        line(content="blue car", title="The car", created_at=1000.0),
                        line(content="green car", title="the car", created_at=1500.0)], 1)
    store.commit_import(token)
    newest = next(r["id"] for r in store.rows() if r["content"] == "red car")
    assert superseded(store) == {"red car": None, "blue car": newest, "green car": newest}
    with db.atomic():  # every older memory of the group now points at the newest: three rows change
        assert store._supersede(db.conn, [("alice", "the car"), ("alice", "no such cue")]) == 0
        db.execute("UPDATE memories SET created_at = 4000 WHERE content = 'blue car'")
        assert store._supersede(db.conn, [("alice", "the car")]) == 3
    db.execute("UPDATE memories SET created_at = 1000 WHERE content = 'blue car'")
    with db.atomic():
        assert store._supersede(db.conn, [("alice", "the car")]) == 3
    store.add("alice", "journal", "yellow car", importance=3, title="the car", created_at=3000.0)
    yellow = next(r["id"] for r in store.rows() if r["content"] == "yellow car")
    assert set(superseded(store).values()) == {yellow, None}
    assert superseded(store)["yellow car"] is None
