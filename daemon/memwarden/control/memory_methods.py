"""RPC methods of the memory store and the learning trigger: add, staged import, list, count, show, due.

An import larger than one request (the socket takes lines of at most 1 MiB) is staged: `memories.import_begin`
gives a token, `memories.import_chunk` validates and stages consecutive chunks of lines (numbered from
`first_line`, so bad lines are reported with their line number in the file), and `memories.import_commit`
inserts everything in one transaction — or, when any line was bad, refuses with all of them and imports
nothing (`memories.import_abort` drops a session; an idle one is dropped after 10 minutes).

Imports are idempotent: a client passes an `import_id` of its choosing to `memories.import` or
`memories.import_begin`, and the id is committed with the memories. A retry with an id already committed
answers `already_imported: true` with what that import brought, and imports nothing again.

`memories.list` answers in pages (learning/pages.py): at most MAX_PAGE_ROWS memories and MAX_PAGE_CHARS
characters of text, read and encoded in a worker thread; `next_offset` says where the next page starts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from memwarden.control.params import bool_param, int_param, str_param
from memwarden.control.protocol import ApplicationError, Encoded, InvalidParams
from memwarden.control.registry import Registry
from memwarden.learning import import_ledger
from memwarden.learning.pages import PageQuery, page_json_async
from memwarden.learning.store import (
    MAX_REPORTED,
    BadRecord,
    ImportRejected,
    ImportSessionError,
    MemoryNotFound,
)
from memwarden.learning.trigger import next_window_start
from memwarden.logs import get_logger

if TYPE_CHECKING:
    from memwarden.services import Services

log = get_logger()


def _rejected(exc: ImportRejected) -> ApplicationError:
    shown = exc.errors[:MAX_REPORTED]
    return ApplicationError(str(exc), {"bad_lines": [list(e) for e in shown], "bad_count": exc.bad_count})


def _opt_str(name: str, value: Any) -> str | None:
    return None if value is None else str_param(name, value)


def _import_id(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return import_ledger.check_id(value)
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None


def _lines_param(lines: Any) -> list[str | None]:
    if not isinstance(lines, list):
        raise InvalidParams("'lines' must be a list of strings (the file's lines, in order)")
    for i, line in enumerate(lines):
        if line is not None and not isinstance(line, str):
            raise InvalidParams(f"'lines'[{i}] must be a string (or null for a line the client could not send)")
    return lines


def register_memories(reg: Registry, s: Services) -> None:
    store = s.memories

    async def memories_add(profile: Any = None, kind: Any = None, content: Any = None, response: Any = None,
                           importance: Any = None, created_at: Any = None, cue: Any = None, title: Any = None,
                           tags: Any = None, prompt: Any = None, chosen: Any = None,
                           rejected: Any = None) -> dict[str, Any]:
        """Add one memory: profile, kind, content, importance 1–10, optional response, created_at, cue, title and
        tags; a preference's prompt, chosen and rejected (admin)."""
        try:
            memory_id = store.add(profile, kind, content, response, importance=importance, created_at=created_at,
                                  cue=cue, title=title, tags=tags, prompt=prompt, chosen=chosen, rejected=rejected)
        except BadRecord as exc:
            raise InvalidParams(exc.message) from None
        row = store.show(memory_id)
        log.info("memory added", id=memory_id, profile=row["profile"], kind=row["kind"], adapter=row["adapter"],
                 importance=row["importance"], cue=row["cue"] or row["title"])
        return row

    async def memories_import(lines: Any, import_id: Any = None) -> dict[str, Any]:
        """Import JSONL lines given in one request: all or nothing, bad lines reported by number; once per
        import_id (admin)."""
        try:
            result = store.import_lines(_lines_param(lines), import_id=_import_id(import_id))
        except ImportRejected as exc:
            raise _rejected(exc) from None
        log.info("memories import already committed" if result.get("already_imported") else "memories imported",
                 **result)
        return result

    async def import_begin(import_id: Any = None) -> dict[str, Any]:
        """Start a staged import; returns the token for import_chunk / import_commit, or already_imported when
        this import_id was committed before (admin)."""
        ident = _import_id(import_id)
        if ident is not None and (earlier := store.imported(ident)) is not None:
            log.info("memories import already committed", import_id=ident, imported=earlier["imported"])
            return {"token": None, **import_ledger.already(ident, earlier)}
        try:
            token = store.begin_import(ident)
        except ImportSessionError as exc:
            raise ApplicationError(str(exc)) from None
        return {"token": token, "max_reported": MAX_REPORTED}

    async def import_chunk(token: Any, lines: Any, first_line: Any = 1) -> dict[str, Any]:
        """Validate and stage the next chunk of lines, numbered from first_line; returns its bad lines (admin)."""
        first = int_param("first_line", first_line, 1, 2**53)
        try:
            return store.stage(token, _lines_param(lines), first)
        except ImportSessionError as exc:
            raise ApplicationError(str(exc)) from None

    async def import_commit(token: Any, total_lines: Any = None) -> dict[str, Any]:
        """Insert everything staged in one transaction, or refuse with every bad line (admin)."""
        total = int_param("total_lines", total_lines, 0, 2**53, optional=True)
        started = time.perf_counter()
        try:
            result = store.commit_import(token, total)
        except ImportRejected as exc:
            raise _rejected(exc) from None
        except ImportSessionError as exc:
            raise ApplicationError(str(exc)) from None
        log.info("memories import already committed" if result.get("already_imported") else "memories imported",
                 **result, commit_ms=round((time.perf_counter() - started) * 1000, 1))
        return result

    async def import_abort(token: Any) -> dict[str, Any]:
        """Drop a staged import: nothing of it is imported (admin)."""
        try:
            return store.abort_import(token)
        except ImportSessionError as exc:
            raise ApplicationError(str(exc)) from None

    async def memories_list(profile: Any = None, kind: Any = None, adapter: Any = None, consolidated: Any = None,
                            limit: Any = 50, offset: Any = 0) -> Encoded:
        """Memories matching the filters, newest first, a page at a time; how many match in all, and the offset
        of the next page."""
        query = PageQuery(_opt_str("profile", profile), _opt_str("kind", kind), _opt_str("adapter", adapter),
                          None if consolidated is None else bool_param("consolidated", consolidated),
                          int_param("limit", limit, 1, 10000), int_param("offset", offset, 0, 2**53))
        return Encoded(await page_json_async(store.db.conn, query))

    async def memories_count(profile: Any = None, kind: Any = None, adapter: Any = None) -> dict[str, Any]:
        """Memories per profile, adapter and kind; unconsolidated importance per adapter against the threshold."""
        out = store.count(_opt_str("profile", profile), _opt_str("kind", kind), _opt_str("adapter", adapter))
        out["threshold"] = s.config.learning.importance_threshold
        out["adapters"] = [{"adapter": a, **v} for a, v in store.unconsolidated_importance().items()]
        return out

    async def memories_show(id: Any) -> dict[str, Any]:
        """One memory, in full."""
        try:
            return store.show(int_param("id", id, 1, 2**63 - 1))
        except MemoryNotFound as exc:
            raise ApplicationError(str(exc)) from None

    async def learning_due() -> dict[str, Any]:
        """Per adapter: is a training run due, and if not, why not (below threshold, min_interval, running)."""
        cfg = s.config.learning
        now = time.time()
        sums = store.unconsolidated_importance()
        profiles = store.adapters()
        decisions = s.learning.runs.due_report(now, {a: v["importance"] for a, v in sums.items()}, cfg,
                                               known=profiles)
        start = next_window_start(cfg.window, now) if any(d.due for d in decisions) else None
        return {
            "enabled": cfg.enabled, "threshold": cfg.importance_threshold, "min_interval": cfg.min_interval,
            "window": cfg.window, "now": now, "window_start": start,
            "adapters": [{**d.to_dict(), "profile": profiles.get(d.adapter),
                          "unconsolidated": sums.get(d.adapter, {}).get("count", 0),
                          "starts_at": start if d.due else None} for d in decisions],
        }

    reg.add("memories.add", memories_add, admin=True)
    reg.add("memories.import", memories_import, admin=True)
    reg.add("memories.import_begin", import_begin, admin=True)
    reg.add("memories.import_chunk", import_chunk, admin=True)
    reg.add("memories.import_commit", import_commit, admin=True)
    reg.add("memories.import_abort", import_abort, admin=True)
    reg.add("memories.list", memories_list)
    reg.add("memories.count", memories_count)
    reg.add("memories.show", memories_show)
    reg.add("learning.due", learning_due)
