"""Native journald entries from structlog event dicts: MESSAGE, PRIORITY, MESSAGE_ID and one upper-case
field per key, so `journalctl -o json` carries every decision's inputs."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from typing import Any

SYSLOG_IDENTIFIER = "memwarden"
# Fixed forever: MESSAGE_IDs derive from it, and journalctl MESSAGE_ID= filters depend on them.
_MESSAGE_ID_NAMESPACE = uuid.UUID("5f6b7a0e-3c1d-4e8a-9b2f-6d4c8e1a7b30")

PRIORITY_OF_LEVEL = {"critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
_BAD_CHARS = re.compile(r"[^A-Z0-9_]")


def message_id(kind: str) -> str:
    """The journald MESSAGE_ID of an alert kind (or any event class): stable across versions."""
    return uuid.uuid5(_MESSAGE_ID_NAMESPACE, kind).hex


def field_name(key: str) -> str | None:
    name = _BAD_CHARS.sub("_", key.upper()).lstrip("_0123456789")
    # Fields starting with "_" are journald's trusted fields; it drops them from clients.
    return name[:64] or None


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def journal_fields(_logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, str]:
    """structlog's final processor: the event dict as journal fields (passed to JournalLogger.msg)."""
    event = dict(event_dict)
    level = str(event.pop("level", method_name))
    message = _value(event.pop("event", ""))
    priority = event.pop("priority", PRIORITY_OF_LEVEL.get(level, 6))
    explicit_id = event.pop("message_id", None)
    event.pop("timestamp", None)  # journald stamps entries itself
    fields: dict[str, str] = {
        "MESSAGE": message,
        "PRIORITY": str(int(priority)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
    }
    if explicit_id:
        fields["MESSAGE_ID"] = str(explicit_id)
    exc = event.pop("exception", None)
    if exc:
        fields["EXCEPTION"] = _value(exc)
    for key, value in event.items():
        name = field_name(key)
        if name and name not in fields and value is not None:
            fields[name] = _value(value)
    return fields


def stderr_is_journal(environ: dict[str, str] | None = None, fd: int = 2) -> bool:
    """True when systemd connected stderr to journald (JOURNAL_STREAM names this very stream)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class JournalLogger:
    """A structlog logger whose messages go to journald through libsystemd (cysystemd)."""

    def __init__(self, send: Callable[..., Any] | None = None):
        if send is None:
            from cysystemd import journal

            send = journal.send
        self._send = send

    def msg(self, **fields: str) -> None:
        try:
            self._send(**fields)
        except OSError as exc:
            # The journal went away (journald restarting): keep the line rather than lose it.
            os.write(2, f"<{fields.get('PRIORITY', 6)}>{fields.get('MESSAGE', '')} ({exc})\n".encode())

    debug = info = warning = warn = error = critical = exception = log = msg
