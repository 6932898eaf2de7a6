"""Pages of memories: the JSON SQLite writes is the memory itself, and a page stops at its bounds."""

from __future__ import annotations

import json

import pytest
import sqlite_utils

from memwarden.learning.pages import PageQuery, encode_page, page_json, read_page
from memwarden.learning.store import MemoryStore
from memwarden.state.db import migrate, open_state


@pytest.fixture
def store() -> MemoryStore:
    db = sqlite_utils.Database(memory=True)
    migrate(db)
    return MemoryStore(db)


def page(store: MemoryStore, **kw) -> dict:
    return json.loads(encode_page(read_page(store.db.conn, PageQuery(**kw), max_chars=100)))


def add(store: MemoryStore, content: str, at: float, response: str | None = None) -> int:
    return store.add("alice", "journal", content, response, importance=4, created_at=at)


def test_a_memory_reads_back_exactly_as_stored(store):
    add(store, 'quotes " and \\ backslashes, a tab\t, \x01, é and 😀', 1716000000.123456, "réponse\n")
    store.mark_consolidated([1], "run-1", at=1716000001.000001)
    listed = page(store)
    assert listed == {"total": 1, "next_offset": None, "memories": store.rows()}
    assert listed["memories"][0]["created_at"] == 1716000000.123456


def test_a_page_stops_at_its_text_budget_and_says_where_the_next_starts(store):
    for i in range(5):
        add(store, "x" * 30, float(i))
    first = page(store, limit=10)  # 100 characters: three memories of 30
    assert [m["created_at"] for m in first["memories"]] == [4.0, 3.0, 2.0]
    assert first["next_offset"] == 3 and first["total"] == 5
    rest = page(store, limit=10, offset=3)
    assert [m["created_at"] for m in rest["memories"]] == [1.0, 0.0] and rest["next_offset"] is None


def test_one_memory_longer_than_the_budget_still_makes_a_page(store):
    add(store, "y" * 500, 1.0)
    add(store, "z", 2.0)
    assert [m["content"][0] for m in page(store, limit=5, offset=1)["memories"]] == ["y"]


def test_the_callers_limit_and_filters_hold(store):
    for i in range(4):
        add(store, "a", float(i))
    store.add("bob", "dream", "b", importance=2, created_at=9.0)
    assert page(store, limit=2)["next_offset"] == 2
    bob = page(store, profile="bob")
    assert bob["total"] == 1 and bob["memories"][0]["profile"] == "bob"


def test_a_page_is_read_from_the_file_on_a_connection_of_its_own(tmp_path):
    db = open_state(tmp_path)
    MemoryStore(db).add("alice", "journal", "on disk", importance=3, created_at=5.0)
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    assert json.loads(page_json(path, PageQuery()))["memories"][0]["content"] == "on disk"
