"""Human sizes ("4GiB") and durations ("1h30m") to bytes and seconds, and back."""

from __future__ import annotations

import math
import re

KiB, MiB, GiB = 1024, 1024**2, 1024**3
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_size(value: str | int | float) -> int:
    """Bytes from an int or a string like "512MiB", "4GiB", "1.5GB", "1048576"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '4GiB', got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"size must be a finite number, got {value}")
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as '4GiB', got {type(value).__name__}")
    match = _SIZE_RE.match(value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as '512MiB' or '4GiB', got {value!r}")
    nbytes = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not math.isfinite(nbytes):  # 400 nines: an OverflowError in int() escaped every caller's ValueError
        raise ValueError(f"size {value[:40]!r}… is too large")
    return int(nbytes)


def _suggestion(amount: float) -> str:
    shown = f"{amount:g}"
    # A few units of something leased or reserved are GiB; hundreds are MiB (a 512 GiB reserve is no one's intent).
    return f"{shown}GiB" if amount < 100 else f"{shown}MiB"


def parse_memory_size(value: str | int | float) -> int:
    """parse_size for an amount of RAM or VRAM (a lease, a reserve): a number with no unit under 1 MiB is
    refused, since `lease 4` meant 4 GiB, not 4 bytes. Bytes from JSON clients (≥ 1 MiB) and 0 still pass."""
    nbytes = parse_size(value)
    bare = not isinstance(value, str) or not (match := _SIZE_RE.match(value)) or not match.group(2)
    if bare and 0 < (amount := float(value)) < MiB:  # float: "0.5" is 0 bytes, and no less a missing unit
        raise ValueError(f"size {amount:g} has no unit and is under 1 MiB: did you mean {_suggestion(amount)}? "
                         "(units: GiB = 2^30 bytes, GB = 10^9)")
    return nbytes


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number or a string like "30s", "5m", "1h30m", "250ms"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', got a boolean")
    if isinstance(value, int | float):
        if math.isnan(value):
            raise ValueError("duration must be a number, got nan")
        if math.isinf(value):  # TOML's inf, JSON's Infinity: a lease.acquire wait that never ended
            raise ValueError(f"duration must be finite, got {value}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '30s', got {type(value).__name__}")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        total = float(text)
        pos = len(text)
    else:
        pos, total = 0, 0.0
        for part in _DURATION_PART_RE.finditer(text):
            if part.start() != pos:
                break
            total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
            pos = part.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as '30s', '5m' or '1h30m', got {value!r}")
    if math.isinf(total):
        raise ValueError(f"duration {value[:40]!r}… is too long")
    return total


def format_size(nbytes: int | float | None) -> str:
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    if whole or not parts:
        parts.append(f"{whole}s")
    return "".join(parts)


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
FOREVER = float("inf")


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration string ("10m", "1h2m3s", "-1m", "300ms", "0"), as Ollama reads keep_alive."""
    s = text
    sign = -1.0 if s[:1] == "-" else 1.0
    if s[:1] in ("-", "+"):
        s = s[1:]
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for part in _GO_PART_RE.finditer(s):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _GO_UNITS[part.group(2)]
        pos = part.end()
    if not s or pos != len(s):
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * total


def parse_keep_alive(value: object) -> float:
    """Ollama's keep_alive: a number of seconds or a Go duration string; negative means forever (inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"keep_alive must be a number of seconds or a duration string, got {value!r}")
    seconds = float(value) if not isinstance(value, str) else parse_go_duration(value)
    return FOREVER if seconds < 0 else seconds
