"""How each config value is written and read: `setting()` (a key's default, parser and doc) and the parsers.

Each parser takes the raw TOML value and returns the typed value, or raises ValueError naming what is wrong in
words that the loader puts after the key's path.
"""

from __future__ import annotations

import grp
import re
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from memwarden.units import parse_duration, parse_memory_size, parse_size

Parser = Callable[[Any], Any]


def setting(raw: Any, parse: Parser, doc: str, secret: bool = False) -> Any:
    """A key whose default is written as a user would write it in TOML (`raw`), parsed like user input. A
    `secret` key's value is never shown or logged in full (config/redact.py), nor quoted in its errors."""
    return field(default=parse(raw), metadata={"parse": parse, "doc": doc, "raw": raw, "secret": secret})



def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value



def number(lo: float | None = None, hi: float | None = None) -> Parser:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValueError(f"expected a number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"expected a number from {lo} to {hi}, got {value!r}")
        return float(value)
    return parse



def integer(lo: int, hi: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {value!r}")
        return value
    return parse



def size(value: Any) -> int:
    return parse_size(value)



def memory_size(value: Any) -> int:
    """An amount of RAM or VRAM (a reserve, a lease): a bare number under 1 MiB is refused as a missing unit."""
    return parse_memory_size(value)



def size_between(lo: int, hi: int) -> Parser:
    def parse(value: Any) -> int:
        nbytes = parse_size(value)
        if not lo <= nbytes <= hi:
            raise ValueError(f"expected a size from {lo} to {hi} bytes, got {value!r}")
        return nbytes
    return parse



def duration(lo: float = 0.0) -> Parser:
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < lo:
            raise ValueError(f"must be at least {lo:g}s, got {value!r}")
        return seconds
    return parse



def choice(*options: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(repr(o) for o in options)}, got {value!r}")
        return value
    return parse



def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value



def optional_path(value: Any) -> Path | None:
    if not isinstance(value, str):
        raise ValueError(f"expected a path string, got {value!r}")
    if value == "":
        return None
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {value!r}")
    return Path(value)



def http_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL string, got {value!r}")
    if value == "":
        return value
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value



def secret_url(value: Any) -> str:
    """http_url for a key that holds a credential: its errors never quote the value."""
    try:
        return http_url(value)
    except ValueError:
        raise ValueError("expected an http:// or https:// URL (the value is not shown: it may hold a secret)") \
            from None



def group_name(value: Any) -> str:
    name = text(value)
    if name:
        try:
            grp.getgrnam(name)
        except KeyError:
            raise ValueError(f"no such group {name!r} on this machine") from None
    return name



def host_port(value: Any) -> str:
    value = text(value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT such as '127.0.0.1:11435', got {value!r}")
    return value



def rate(value: Any) -> float:
    """Bytes per second from "1MiB/min", "10MB/h", "512KiB/s"."""
    value = text(value)
    amount, sep, per = value.partition("/")
    seconds = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0}
    if not sep or per.strip() not in seconds:
        raise ValueError(f"expected a rate such as '1MiB/min', '10MB/h' or '512KiB/s', got {value!r}")
    nbytes = size(amount.strip())
    if nbytes <= 0:
        raise ValueError(f"rate must be more than 0, got {value!r}")
    return nbytes / seconds[per.strip()]



def docker_url(value: Any) -> str:
    value = text(value)
    if not value.startswith(("unix://", "tcp://", "http://", "https://", "ssh://")):
        raise ValueError(f"expected a Docker URL such as 'unix:///var/run/docker.sock', got {value!r}")
    return value



def http_urls(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of http:// or https:// URLs, got {value!r}")
    for url in value:
        if not isinstance(url, str) or not url:
            raise ValueError(f"expected a list of http:// or https:// URLs, got {url!r} in it")
        http_url(url)
    return tuple(value)



_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def identifiers(value: Any) -> tuple[str, ...]:
    """A non-empty list of plain identifiers (letters, digits, underscores; not starting with a digit)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of names such as [\"q_proj\", \"v_proj\"], got {value!r}")
    for name in value:
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"expected plain names (letters, digits, underscores), got {name!r} in the list")
    return tuple(value)


def cron(value: Any) -> str:
    value = text(value)
    if value == "":
        return value
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(f"expected a crontab line such as '0 2 * * *' (minute hour day month weekday): {exc}") \
            from None
    return value



def model_dir(value: Any) -> str:
    value = text(value)
    if value and not value.startswith("/"):
        raise ValueError(f"expected an absolute path to a Hugging Face model directory, got {value!r}")
    return value



def metrics_listen(value: Any) -> str:
    value = host_port(value)
    host = value.rpartition(":")[0]
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"expected HOST:PORT with an IPv6 address in brackets ('[::1]:9847'), got {value!r}")
    return value


class Resources(dict[str, float]):
    """A table of Ray resource amounts (read-only by convention, hashable so the frozen config is)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def resources(value: Any) -> Resources:
    """A table of resource names to positive amounts, e.g. { trainer_gpu = 1 } or { num_gpus = 1 }."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a table such as {{ trainer_gpu = 1 }}, got {value!r}")
    out = Resources()
    for name, amount in value.items():
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"expected a resource name without spaces, got {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount <= 1e6:
            raise ValueError(f"expected a positive amount for resource {name!r}, got {amount!r}")
        out[name] = float(amount)
    return out
