"""Pages of memories for the control socket, bounded and read off the event loop.

A page holds at most MAX_PAGE_ROWS memories and at most MAX_PAGE_CHARS characters of content and response
together, whatever `limit` the caller asked for, but always at least one memory (a memory alone is at most
2 × MAX_TEXT characters). `next_offset` is where the next page starts, or null after the last memory.

The page is read on a connection of its own (read-only; WAL lets it read beside the daemon's writes) in a worker
thread, and SQLite writes each memory's JSON itself (json_object): the thread holds the GIL only to collect the
rows' bytes, so a large page costs the event loop nothing but the hand-over. PAGE_WORKERS pages are built at
once; more wait their turn.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

MAX_PAGE_ROWS = 1000
MAX_PAGE_CHARS = 4 * 1024 * 1024  # of content + response per page: ten memories of the longest kind
PAGE_WORKERS = 1  # the loop keeps a core of its own on a two-core machine

_executor: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class PageQuery:
    profile: str | None = None
    kind: str | None = None
    adapter: str | None = None
    consolidated: bool | None = None
    limit: int = 50
    offset: int = 0

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for name, value in (("profile", self.profile), ("kind", self.kind), ("adapter", self.adapter)):
            if value is not None:
                clauses.append(f"{name} = ?")
                params.append(value)
        if self.consolidated is not None:
            clauses.append(f"consolidated_run IS {'NOT ' if self.consolidated else ''}NULL")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


@dataclass(frozen=True)
class Page:
    total: int
    memories: list[bytes]  # each memory as a JSON object
    next_offset: int | None


def _row_json(conn: sqlite3.Connection) -> str:
    """SQL for one memory as a JSON object (its bytes), every column of the table as it is now. REAL columns
    are written with 17 significant digits, as json_object's own 15 would round a time's microseconds; tags,
    stored as a JSON list, as that list."""
    parts = []
    for _, name, kind, *_ in conn.execute("PRAGMA table_info(memories)"):
        value = (f"CASE WHEN {name} IS NULL THEN NULL ELSE json(printf('%!.17g', {name})) END"
                 if kind.upper() == "REAL" else f"json({name})" if name == "tags" else name)
        parts.append(f"'{name}', {value}")
    return f"CAST(json_object({', '.join(parts)}) AS BLOB)"


def read_page(conn: sqlite3.Connection, query: PageQuery, max_rows: int = MAX_PAGE_ROWS,
              max_chars: int = MAX_PAGE_CHARS) -> Page:
    """Memories matching the query, newest first, within the page bounds."""
    where, params = query.where()
    total = conn.execute(f"SELECT COUNT(*) FROM memories{where}", params).fetchone()[0]
    want = min(query.limit, max_rows)
    # The order is decided on ids alone (the created_at index), and then each row read by its id, only as long
    # as the page has room: a page never reads the text it will not send.
    ids = [r[0] for r in conn.execute(
        f"SELECT id FROM memories{where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        [*params, want + 1, query.offset])]
    one = (f"SELECT length(content) + coalesce(length(response), 0), {_row_json(conn)} FROM memories "
           "WHERE id = ?")
    rows: list[bytes] = []
    chars = 0
    for memory_id in ids[:want]:
        size, row = conn.execute(one, [memory_id]).fetchone()
        if rows and chars + size > max_chars:
            break
        rows.append(row)
        chars += size
    more = len(rows) < len(ids)
    return Page(total, rows, query.offset + len(rows) if more else None)


def encode_page(page: Page) -> bytes:
    """The page as the JSON object `{"total", "next_offset", "memories"}`."""
    next_offset = b"null" if page.next_offset is None else b"%d" % page.next_offset
    parts = [b'{"total":%d,"next_offset":%s,"memories":[' % (page.total, next_offset)]
    for i, memory in enumerate(page.memories):
        parts += (b",", memory) if i else (memory,)
    parts.append(b"]}")
    return b"".join(parts)  # one copy of the page's bytes


def database_file(conn: sqlite3.Connection) -> str:
    """The main database's file, or "" for an in-memory database."""
    for _, name, path in conn.execute("PRAGMA database_list"):
        if name == "main":
            return path or ""
    return ""


def page_json(path: str, query: PageQuery) -> bytes:
    """Read and encode one page on a read-only connection of its own (call in a worker thread)."""
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=5.0, isolation_level=None)
    try:
        conn.execute("BEGIN")  # the count and the rows from one snapshot
        return encode_page(read_page(conn, query))
    finally:
        conn.close()


async def page_json_async(main: sqlite3.Connection, query: PageQuery) -> bytes:
    """One encoded page, built in a worker thread when the database is a file (in memory: here)."""
    global _executor
    path = database_file(main)
    if not path:
        return encode_page(read_page(main, query))
    if _executor is None:
        _executor = ThreadPoolExecutor(PAGE_WORKERS, thread_name_prefix="memwarden-pages")
    return await asyncio.get_running_loop().run_in_executor(_executor, page_json, path, query)
