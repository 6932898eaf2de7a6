"""`memwardenctl memories import FILE.jsonl`: a file sent in chunks under one import id, resent on a lost
connection, so that it is imported once or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from memwarden.cli import render_memories
from memwarden.cli.usage import fail
from memwarden.control.client import Client, ConnectError
from memwarden.control.protocol import MAX_LINE, RpcError

# An import is sent in chunks that keep each request under the socket's line limit.
CHUNK_BYTES = MAX_LINE - 8192  # JSON-encoded lines per request, leaving room for the envelope
CHUNK_LINES = 10000
IMPORT_RETRIES = 3  # a connection lost mid-import: send it again, under the same import id, this many times
RETRY_PAUSE = 1.0  # seconds before the first retry; the next ones wait longer


def _chunks(stream: Any, local_errors: dict[int, str]) -> Any:
    """(first_line, lines) chunks of the file, each under CHUNK_BYTES once JSON-encoded. A line that cannot be
    sent (not UTF-8, or too long for one request) goes as null, with its reason in local_errors."""
    chunk: list[str | None] = []
    size, first = 0, 1
    for n, raw in enumerate(stream, 1):
        try:
            line: str | None = raw.decode().rstrip("\r\n")
            cost = len(json.dumps(line)) + 1
        except UnicodeDecodeError as exc:
            local_errors[n] = f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
            line, cost = None, 5
        if line is not None and cost > CHUNK_BYTES:
            local_errors[n] = (f"{len(raw):,} bytes is too long to send (the control socket takes requests of "
                               f"at most {MAX_LINE // 1024} KiB)")
            line, cost = None, 5
        if chunk and (size + cost > CHUNK_BYTES or len(chunk) >= CHUNK_LINES):
            yield first, chunk
            first, chunk, size = n, [], 0
        chunk.append(line)
        size += cost
    if chunk:
        yield first, chunk


class Progress:
    """`FILE: 41% (12,000 lines sent)` redrawn on stderr, for a file large enough to take a while; shown on a
    terminal, or wherever --progress asks (a log of a cron job's import, say)."""

    MIN_BYTES = 1 << 20  # a smaller file is sent before anyone could read the line

    def __init__(self, stream: Any, path: Path, asked: bool | None):
        try:
            self.size = os.fstat(stream.fileno()).st_size if stream.seekable() else 0
        except (OSError, ValueError):
            self.size = 0
        shown = sys.stderr.isatty() if asked is None else asked
        self.on = shown and (asked or self.size >= self.MIN_BYTES)
        self.path, self.stream, self.drawn = path, stream, False

    def update(self, lines: int) -> None:
        if not self.on:
            return
        done = f"{100 * self.stream.tell() / self.size:.0f}% " if self.size else ""
        sys.stderr.write(f"\r{self.path}: {done}({lines:,} lines sent)")
        sys.stderr.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            self.drawn = False


def import_memories(sock: Path, path: Path, timeout: float, as_json: bool, import_id: str | None = None,
                    progress: bool | None = None) -> int:
    """Stream a JSONL file to the daemon in chunks; commit only when no line was bad.

    The import carries an id (--import-id, else a fresh one) that the daemon commits with the memories. When the
    connection drops before the answer (the commit may or may not have happened), the file is sent again from
    its start under the same id: the daemon imports it once, and answers a retry of a committed import with
    "already imported"."""
    import_id = import_id or secrets.token_hex(16)
    try:
        stream = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    except OSError as exc:
        return fail(f"{path}: {exc.strerror or exc}", 2)
    lost: Exception | None = None
    with stream:
        for attempt in range(IMPORT_RETRIES + 1):
            if attempt:
                if not stream.seekable():
                    break
                stream.seek(0)
                time.sleep(RETRY_PAUSE * attempt)
            try:
                client = Client(sock, timeout=timeout)
            except ConnectError as exc:
                if attempt == 0:
                    raise  # no daemon at all: say so, as every command does
                lost = exc
                continue
            try:
                with client:
                    shown = Progress(stream, path, progress)
                    try:
                        return _send_import(client, stream, path, as_json, import_id, shown)
                    finally:
                        shown.end()
            except (ConnectError, TimeoutError, ConnectionError) as exc:
                lost = exc
                print(f"memwardenctl: {path}: the connection to the daemon was lost during the import ({exc}); "
                      f"sending it again as import {import_id}", file=sys.stderr)
    return fail(f"{path}: the connection to the daemon was lost during the import ({lost}); it was imported "
                f"once or not at all: run the same import with --import-id {import_id} to finish it", 3)


def _send_import(client: Client, stream: Any, path: Path, as_json: bool, import_id: str,
                 progress: Progress) -> int:
    errors: dict[int, str] = {}
    local: dict[int, str] = {}
    bad_count = total = 0
    begun = client.call("memories.import_begin", {"import_id": import_id})
    if begun.get("already_imported"):
        return _imported(begun, as_json)
    token = begun["token"]
    committed = False
    try:
        for first, lines in _chunks(stream, local):
            res = client.call("memories.import_chunk", {"token": token, "lines": lines, "first_line": first})
            errors.update((n, m) for n, m in res["bad"])
            bad_count = res["bad_count"]
            total = first + len(lines) - 1
            progress.update(total)
        if not bad_count:
            committed = True  # from here a lost answer is retried under the same id, never aborted
            result = client.call("memories.import_commit", {"token": token, "total_lines": total})
    finally:
        if not committed:
            with contextlib.suppress(RpcError, OSError):  # else the daemon drops an idle import itself
                client.call("memories.import_abort", {"token": token})
    if not bad_count:
        return _imported(result, as_json)
    errors.update(local)  # the client's own reason beats the daemon's generic one
    if as_json:
        print(json.dumps({"imported": 0, "bad_count": bad_count, "bad_lines": sorted(errors.items())}, indent=2))
    else:
        for n in sorted(errors):
            print(f"line {n}: {errors[n]}", file=sys.stderr)
        more = bad_count - len(errors)
        print(f"memwardenctl: {path}: {bad_count} bad line{'s' if bad_count != 1 else ''}"
              f"{f' ({more} not shown)' if more > 0 else ''}; nothing imported", file=sys.stderr)
    return 1


def _imported(result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(result, indent=2))
    elif result.get("already_imported"):
        n = result["imported"]
        print(f"already imported, {n} memor{'y' if n == 1 else 'ies'} (import {result['import_id']}); "
              "nothing imported again")
    else:
        print(render_memories.imported(result))
    return 0
