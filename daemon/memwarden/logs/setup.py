"""structlog set-up: journald native entries under systemd, else console lines or JSON."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from memwarden.config.redact import redact_event
from memwarden.logs.journald import JournalLogger, journal_fields, stderr_is_journal

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def resolve_format(fmt: str) -> str:
    if fmt == "auto":
        return "journal" if stderr_is_journal() else "console"
    return fmt


def configure_logging(level: str = "info", fmt: str = "auto", journal_send: Any = None) -> str:
    """(Re)configure structlog; returns the format in effect."""
    fmt = resolve_format(fmt)
    # Every line, whatever its format, goes through the secrets rule (config/redact.py), its traceback included:
    # hence format_exc_info before it in the console format too.
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.processors.format_exc_info, redact_event]
    if fmt == "journal":
        processors = [*shared, journal_fields]
        factory: Any = lambda *_: JournalLogger(journal_send)  # noqa: E731
    elif fmt == "json":
        processors = [*shared, structlog.processors.TimeStamper(fmt="iso", utc=True),
                      structlog.processors.JSONRenderer(default=str)]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors = [*shared, structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
                      structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), sort_keys=False)]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    # apscheduler reports a skipped run (a pass still busy) through stdlib logging; the probe runner already
    # says which probe is stuck, in structured form, so only its errors are worth passing on.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return fmt


def get_logger(name: str = "memwarden") -> Any:
    return structlog.get_logger(name)
