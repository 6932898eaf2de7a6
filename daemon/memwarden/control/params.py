"""Checks for RPC params: each raises InvalidParams naming the param and what was wrong."""

from __future__ import annotations

from typing import Any

from memwarden.control.protocol import InvalidParams
from memwarden.units import format_duration, parse_duration, parse_memory_size


def size_param(name: str, value: Any) -> int:
    """An amount of memory: bytes (a JSON number, at least 1 MiB) or a string with a unit ("4GiB")."""
    try:
        nbytes = parse_memory_size(value)
    except ValueError as exc:
        raise InvalidParams(f"'{name}': {exc}") from None
    if nbytes <= 0:
        raise InvalidParams(f"'{name}' must be more than 0 bytes")
    return nbytes


def duration_param(name: str, value: Any, most: float | None = None) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise InvalidParams(f"'{name}': {exc}") from None
    if most is not None and seconds > most:
        shown = f"{value!r}" if isinstance(value, str) else f"{seconds:g}s"
        raise InvalidParams(f"'{name}' may be at most {format_duration(most)} ({most:g}s), got {shown[:40]}")
    return seconds


def int_param(name: str, value: Any, lo: int, hi: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidParams(f"'{name}' must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def str_param(name: str, value: Any, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidParams(f"'{name}' must be a non-empty string of at most {max_len} characters")
    return value


def bool_param(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidParams(f"'{name}' must be true or false, got {value!r}")
    return value
