"""A memory record, validated: one JSONL line or one dict → {profile, kind, content, response, importance,
created_at, cue, title, tags, prompt, chosen, rejected}, or BadRecord naming every bad field. Pure: no database
here (store.py inserts what passes).

- `cue` and `title` (optional): a short phrase naming what the memory is about, one line of at most MAX_CUE
  characters; `tags` (optional): a list of at most MAX_TAGS such phrases of at most MAX_TAG characters. They key
  the memory's training prompts (cues.py); a cue (else a title) is also the memory's identity for updates.
- Kind `preference` carries `prompt`, `chosen` and `rejected` (non-empty strings, chosen ≠ rejected), no
  `response` (its answer is `chosen`); its `content` may be left out and is then its prompt. No other kind
  carries them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from memwarden.config.routes import MAX_KIND, NAME_RE, NAME_RULE

MAX_TEXT = 200_000  # characters of content, and of response
MAX_CUE = 200  # characters of a cue or a title: a phrase that a prompt names, not a text
MAX_TAG = 64
MAX_TAGS = 16
PREFERENCE = "preference"
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
FIELDS = ("profile", "kind", "content", "response", "importance", "created_at", "cue", "title", "tags",
          *PREFERENCE_FIELDS)
REQUIRED = ("profile", "kind", "importance")


class BadRecord(ValueError):
    """One memory record is invalid; the message names each bad field."""

    def __init__(self, line_no: int | None, problems: Sequence[str]):
        self.line_no = line_no
        self.problems = list(problems)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return "; ".join(self.problems)

    def __str__(self) -> str:
        return self.message if self.line_no is None else f"line {self.line_no}: {self.message}"


class ImportRejected(Exception):
    """An import had bad lines and nothing was imported. `errors` is [(line_no, message)], in line order
    (possibly only the first MAX_REPORTED of `bad_count` for a staged import)."""

    def __init__(self, errors: Sequence[tuple[int, str]], bad_count: int | None = None):
        self.errors = list(errors)
        self.bad_count = len(self.errors) if bad_count is None else bad_count
        shown = "; ".join(f"line {n}: {m}" for n, m in self.errors[:5])
        more = f"; … {self.bad_count - 5} more" if self.bad_count > 5 else ""
        super().__init__(f"{self.bad_count} bad line{'s' if self.bad_count != 1 else ''}, nothing imported: "
                         f"{shown}{more}")


def _profile_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not NAME_RE.match(value):
        return f"profile must be {NAME_RULE}, got {_short(value)}"
    return None


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _phrase_problem(name: str, value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        return f"{name} must be a non-empty line of at most {limit} printable characters, got {_short(value)}"
    return None


def _tags(value: Any) -> tuple[list[str], list[str]]:
    """The tags, stripped and without repeats (case-insensitive), and the problems."""
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        return [], [f"tags must be a list of at most {MAX_TAGS} strings, got {_short(value)}"]
    problems = [p for i, t in enumerate(value) if (p := _phrase_problem(f"tags[{i}]", t, MAX_TAG))]
    if problems:
        return [], problems
    out: list[str] = []
    for tag in value:
        if tag.strip().casefold() not in {t.casefold() for t in out}:
            out.append(tag.strip())
    return out, []


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _preference_problems(record: dict[str, Any], kind: Any) -> list[str]:
    given = [name for name in PREFERENCE_FIELDS if record.get(name) is not None]
    if kind != PREFERENCE:
        return [f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for kind '{PREFERENCE}' only"] if given \
            else []
    problems = [f"{name} is missing (a preference carries {', '.join(PREFERENCE_FIELDS)})"
                for name in PREFERENCE_FIELDS if record.get(name) is None]
    for name in given:
        value = record[name]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name} must be a non-empty string, got {_short(value)}")
        elif len(value) > MAX_TEXT:
            problems.append(f"{name} is longer than {MAX_TEXT:,} characters ({len(value):,})")
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() and _same_text(chosen, rejected):
        problems.append("chosen and rejected are the same text: nothing to prefer")
    if record.get("response") is not None:
        problems.append("a preference has no response: its answer is chosen")
    return problems


def _importance_ok(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not value.is_integer():  # also NaN and infinities
        return False
    return 1 <= value <= 10


def _timestamp(value: Any) -> float:
    """created_at: seconds since the epoch, or an ISO 8601 string (without an offset: UTC)."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        dt = datetime.fromisoformat(value.strip())
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    else:
        raise ValueError
    if not math.isfinite(ts) or ts < 0 or ts > 253402300799:  # 1970 … 9999-12-31
        raise ValueError
    return ts


def validate_record(record: Any, line_no: int | None = None, now: float | None = None) -> dict[str, Any]:
    """A clean memory dict {profile, kind, content, response, importance, created_at}, or BadRecord listing
    every bad field by name. A missing created_at becomes `now` (default: the current time)."""
    if not isinstance(record, dict):
        raise BadRecord(line_no, [f"expected a JSON object, got {type(record).__name__}"])
    problems: list[str] = []
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        problems.append(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                        f"(expected {', '.join(FIELDS)})")
    for name in REQUIRED:
        if record.get(name) is None:
            problems.append(f"{name} is missing")
    profile, kind, content = record.get("profile"), record.get("kind"), record.get("content")
    if content is None and kind != PREFERENCE:
        problems.append("content is missing")
    response, importance, created_at = record.get("response"), record.get("importance"), record.get("created_at")
    if profile is not None and (problem := _profile_problem(profile)):
        problems.append(problem)
    if kind is not None and (not isinstance(kind, str) or not kind.strip() or len(kind) > MAX_KIND
                             or not kind.isprintable()):
        problems.append(f"kind must be a non-empty string of at most {MAX_KIND} printable characters, "
                        f"got {_short(kind)}")
    if content is not None and (not isinstance(content, str) or not content.strip()):
        problems.append(f"content must be a non-empty string, got {_short(content)}")
    elif isinstance(content, str) and len(content) > MAX_TEXT:
        problems.append(f"content is longer than {MAX_TEXT:,} characters ({len(content):,})")
    if response is not None and not isinstance(response, str):
        problems.append(f"response must be a string or null, got {_short(response)}")
    elif isinstance(response, str) and len(response) > MAX_TEXT:
        problems.append(f"response is longer than {MAX_TEXT:,} characters ({len(response):,})")
    if importance is not None and not _importance_ok(importance):
        problems.append(f"importance must be a whole number 1–10, got {_short(importance)}")
    ts = None
    if created_at is not None:
        try:
            ts = _timestamp(created_at)
        except (ValueError, OverflowError):
            problems.append(f"created_at must be seconds since 1970 or an ISO 8601 date-time, "
                            f"got {_short(created_at)}")
    for name in ("cue", "title"):
        if record.get(name) is not None and (problem := _phrase_problem(name, record[name], MAX_CUE)):
            problems.append(problem)
    tags, tag_problems = _tags(record["tags"]) if record.get("tags") is not None else ([], [])
    problems += tag_problems
    problems += _preference_problems(record, kind)
    if problems:
        raise BadRecord(line_no, problems)
    prompt = record.get("prompt")
    return {
        "profile": profile, "kind": kind, "content": content if content is not None else prompt,
        "response": response if response else None,  # "" is no response
        "importance": int(importance),
        "created_at": ts if ts is not None else (time.time() if now is None else now),
        "cue": record["cue"].strip() if record.get("cue") is not None else None,
        "title": record["title"].strip() if record.get("title") is not None else None,
        "tags": tags or None,
        "prompt": prompt, "chosen": record.get("chosen"), "rejected": record.get("rejected"),
    }


def parse_line(line: str | bytes | None, line_no: int, now: float | None = None) -> dict[str, Any] | None:
    """One JSONL line → a clean memory dict; None for a blank line; BadRecord otherwise."""
    if line is None:
        raise BadRecord(line_no, ["line not sent: longer than the control socket's 1 MiB limit or not UTF-8"])
    if isinstance(line, bytes):
        try:
            line = line.decode()
        except UnicodeDecodeError as exc:
            raise BadRecord(line_no, [f"not valid UTF-8 ({exc.reason} at byte {exc.start})"]) from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadRecord(line_no, [f"not valid JSON: {exc.msg} at column {exc.colno}"]) from None
    except RecursionError:
        raise BadRecord(line_no, ["not valid JSON here: nested too deeply"]) from None
    except ValueError:  # the one other ValueError of json.loads: an integer too long to convert
        raise BadRecord(line_no, [f"a number has more than {sys.get_int_max_str_digits():,} digits"]) from None
    return validate_record(obj, line_no, now)
