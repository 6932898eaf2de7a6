"""Go's spellings that Ollama's API uses: time.ParseDuration, RFC 3339 times (time.RFC3339Nano), keep_alive, names."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

MAX_INT64 = 2**63 - 1
FOREVER_NS = MAX_INT64  # Ollama turns a negative keep_alive into time.Duration(math.MaxInt64): ~292 years
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}


class DurationError(ValueError):
    pass


def parse_go_duration(text: str) -> int:
    """time.ParseDuration: "300ms", "-1.5h", "1h2m3s", "0"; returns nanoseconds. Error texts are Go's."""
    quoted = json.dumps(text, ensure_ascii=False)
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise DurationError(f"time: invalid duration {quoted}")
    total = Fraction(0)
    while s:
        i = 0
        while i < len(s) and s[i].isdigit():
            i += 1
        whole = s[:i]
        frac = ""
        if i < len(s) and s[i] == ".":
            j = i + 1
            while j < len(s) and s[j].isdigit():
                j += 1
            frac, i = s[i + 1:j], j
        if not whole and not frac:
            raise DurationError(f"time: invalid duration {quoted}")
        j = i
        while j < len(s) and not (s[j].isdigit() or s[j] == "."):
            j += 1
        unit = s[i:j]
        if not unit:
            raise DurationError(f"time: missing unit in duration {quoted}")
        if unit not in _UNITS:
            raise DurationError(f"time: unknown unit {json.dumps(unit, ensure_ascii=False)} in duration {quoted}")
        value = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        total += value * _UNITS[unit]
        if total > MAX_INT64 + (1 if neg else 0):
            raise DurationError(f"time: invalid duration {quoted}")
        s = s[j:]
    ns = int(total)  # Go truncates the fractional nanoseconds
    return -ns if neg else ns


def parse_keep_alive(value: Any) -> int:
    """api.Duration.UnmarshalJSON: number = seconds, string = Go duration, negative = forever; else "invalid duration".

    Returns nanoseconds (FOREVER_NS for forever). JSON null is handled by the caller (it means "absent").
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DurationError("invalid duration")
    if isinstance(value, str):
        ns = parse_go_duration(value)
        return FOREVER_NS if ns < 0 else ns
    if value < 0:
        return FOREVER_NS
    if math.isinf(value) or value * 1e9 >= MAX_INT64:
        return FOREVER_NS
    return int(value * 1_000_000_000)


def parse_env_keep_alive(text: str) -> int:
    """envconfig.KeepAlive (OLLAMA_KEEP_ALIVE): a Go duration, or else whole seconds; negative = forever."""
    try:
        ns = parse_go_duration(text)
    except DurationError:
        ns = int(text) * 1_000_000_000
    return FOREVER_NS if ns < 0 else ns


def format_duration(ns: int) -> str:
    """Go's Duration.String()-ish, for logs and the test hooks."""
    if ns >= FOREVER_NS:
        return "forever"
    if ns == 0:
        return "0s"
    secs = ns / 1e9
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    out = (f"{int(h)}h" if h else "") + (f"{int(m)}m" if h or m else "")
    return out + f"{s:g}s"


def rfc3339(ns: int | None = None, utc: bool = False) -> str:
    """time.Time marshalled by encoding/json (RFC3339Nano): trailing zeros trimmed, "Z" for UTC, else ±hh:mm.

    `ns` is Unix nanoseconds (may lie centuries ahead); `utc` mirrors time.Now().UTC() vs the local zone.
    """
    if ns is None:
        ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=secs)
    if not utc:
        local = datetime.fromtimestamp(min(secs, 2**33), UTC).astimezone().tzinfo  # the zone's current offset
        dt = dt.astimezone(local)
    offset = dt.utcoffset() or timedelta(0)
    out = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    if offset == timedelta(0) and (utc or dt.tzname() in ("UTC", "GMT", None)):
        return out + "Z"
    total = int(offset.total_seconds())
    sign = "+" if total >= 0 else "-"
    hh, mm = divmod(abs(total) // 60, 60)
    return f"{out}{sign}{hh:02d}:{mm:02d}"


def normalize_name(name: str) -> str:
    """Ollama's short model names: "foo" means "foo:latest"; "registry.ollama.ai/library/" is implied."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/library/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
