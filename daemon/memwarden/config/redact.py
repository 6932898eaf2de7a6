"""The one rule for secrets in whatever memwarden shows or logs.

- In any URL, wherever it appears (a config value, a log line, an error from a library), the user name and
  password (`user:password@`) and every query value (`?token=…`) are secrets: each is shown as `***`.
- A key the schema marks secret (`alerts.webhook`) hides more: everything after its origin (scheme, host,
  port), because webhook services carry their token in the path (Slack, Discord, Teams) as often as in the
  query. `https://hooks.example.com/services/T0/B0/XYZ` is shown as `https://hooks.example.com/***`.
- Log lines also lose every piece of a secret key's value (`remember()`) wherever it appears, so an error text
  that quotes the path without its scheme is scrubbed too. Pieces shorter than MIN_FRAGMENT are left to the URL
  rule: a two-letter password cannot be told apart from ordinary text.

config.show applies this to every caller; only root, asking explicitly (`secrets: true`), sees the values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from memwarden.config.schema import SECTIONS, Config, section_fields

REDACTED = "***"
MIN_FRAGMENT = 4
# A URL inside free text: a scheme, "://", then anything up to white space or a quote or bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}://[^\s'\"<>()\[\]{}]+")

_known: tuple[str, ...] = ()  # remembered secret pieces, longest first


def _origin(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def secret_keys() -> list[str]:
    """`section.key` of every key whose value is a secret."""
    return [f"{name}.{f.name}" for name, section in SECTIONS.items() for f in section_fields(section)
            if f.metadata.get("secret")]


def secret_values(config: Config) -> list[str]:
    """The secret keys' values in `config` (for the log scrubber)."""
    return [str(getattr(getattr(config, key.split(".")[0]), key.split(".")[1])) for key in secret_keys()]


def redact_url(url: str, secret: bool = False) -> str:
    """`url` with its credentials (and, for a secret key, its path) replaced by `***`; see the module doc."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED  # not even parseable (an unbalanced '['): show nothing of it
    if not parts.scheme or not parts.netloc:
        return url if not secret else (REDACTED if url else url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{_origin(netloc)}"
    if secret:
        rest = "/" + REDACTED if (parts.path not in ("", "/") or parts.query or parts.fragment) else parts.path
        return f"{parts.scheme}://{netloc}{rest}"
    query = "&".join(f"{key}={REDACTED}" if eq else REDACTED
                     for key, eq, _ in (pair.partition("=") for pair in parts.query.split("&") if pair))
    return urlunsplit((parts.scheme, netloc, parts.path, query, REDACTED if parts.fragment else ""))


def fragments(url: str, secret: bool = False) -> set[str]:
    """The pieces of `url` that are secret (as written, percent-decoded and re-encoded), to scrub from text."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    pieces = {parts.username or "", parts.password or ""}
    pieces.update(v for _, v in parse_qsl(parts.query, keep_blank_values=True))
    if secret:
        pieces.update({parts.path, parts.query, parts.fragment, url})
    out = set()
    for p in pieces:
        out.update({p, unquote(p), quote(p, safe="/"), quote(unquote(p), safe="/")})
    return {p for p in out if len(p.strip("/")) >= MIN_FRAGMENT}


def remember(secrets: Iterable[str]) -> None:
    """The secret keys' values of the config in effect: log lines lose every piece of them."""
    global _known
    known: set[str] = set()
    for value in secrets:
        if value:
            known |= fragments(value, secret=True)
    _known = tuple(sorted(known, key=len, reverse=True))


def redact_text(text: str, extra: Iterable[str] = ()) -> str:
    """Free text (a message, an error from a library) with every URL's credentials and every remembered (or
    `extra`) secret piece replaced by `***`."""
    for piece in (*sorted(extra, key=len, reverse=True), *_known):
        if piece in text:
            text = text.replace(piece, REDACTED)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text) if "://" in text else text


def redact_value(value: Any, secret: bool = False) -> Any:
    """A config value as shown: strings (and the strings in lists) through the URL rule."""
    if isinstance(value, str):
        return redact_url(value, secret) if (secret or "://" in value) else value
    if isinstance(value, list | tuple):
        return [redact_value(v, secret) for v in value]
    return value


def redact_config(data: Mapping[str, Mapping[str, Any]], secret_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{section: {key: value}} as config.show returns it, with `section.key` in `secret_keys` fully hidden."""
    secret = set(secret_keys)
    return {section: {key: redact_value(v, f"{section}.{key}" in secret) for key, v in values.items()}
            for section, values in data.items()}


def redact_event(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: every string in a log line (values, list items, a formatted exception) scrubbed."""
    return {k: _scrub(v, 2) for k, v in event.items()}


def _scrub(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth and isinstance(value, list | tuple):
        return [_scrub(v, depth - 1) for v in value]
    if depth and isinstance(value, dict):
        return {k: _scrub(v, depth - 1) for k, v in value.items()}
    return value
