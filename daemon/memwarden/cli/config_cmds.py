"""`memwardenctl config show | check FILE` and `version`: what the daemon runs with, and which versions talk
to each other.

`config check` runs locally, through the loader `memwardend --check-config` uses, so a file can be checked
before it is installed or reloaded; `version` answers even when no daemon can be reached."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from memwarden import __version__
from memwarden.config import ConfigError, load_config
from memwarden.control.client import Client, ConnectError
from memwarden.control.protocol import RpcError

EX_CONFIG = 78  # as memwardend --check-config: sysexits.h's EX_CONFIG


def add_parsers(sub: Any) -> None:
    config = sub.add_parser("config", help="the config: config show [--secrets] | check FILE",
                            description="the daemon's config in effect, or a file checked locally")
    verbs = config.add_subparsers(dest="verb", required=True, metavar="VERB")
    show = verbs.add_parser("show", help="the config in effect, defaults filled in, secrets redacted")
    show.add_argument("--secrets", action="store_true", help="show the secrets too (root only)")
    check = verbs.add_parser("check", help="validate a config file here, as memwardend --check-config does; "
                             "exit 78 with every problem if it is not valid")
    check.add_argument("file", type=Path, metavar="FILE", help="the TOML config file")
    sub.add_parser("version", help="memwardenctl's version, and the daemon's when it can be reached",
                   description="memwardenctl's version, and the daemon's when it can be reached")


def problems_text(exc: ConfigError) -> str:
    """What memwardend and `config check` print for a file that is not valid: a count, then each problem."""
    n = len(exc.problems)
    return f"invalid configuration ({n} problem{'s' if n != 1 else ''}):\n{exc}"


def check(path: Path, as_json: bool) -> int:
    try:
        config = load_config(path, must_exist=True)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"file": str(path), "ok": False, "problems": exc.problems}, indent=2))
        else:
            print(f"memwardenctl: {problems_text(exc)}", file=sys.stderr)
        return EX_CONFIG
    if as_json:
        print(json.dumps({"file": str(config.source), "ok": True, "problems": []}, indent=2))
    else:
        print(f"{config.source}: OK")
    return 0


def version(sock: Path, timeout: float, as_json: bool) -> int:
    """Always exit 0 for a usable command line: a daemon that is down is part of the answer, not a failure."""
    daemon: dict[str, Any] | None = None
    error = None
    try:
        with Client(sock, timeout=timeout) as client:
            status = client.call("status")
        daemon = {"version": status["version"], "pid": status["pid"], "socket": str(sock)}
    except ConnectError as exc:
        error = str(exc)
    except RpcError as exc:
        error = exc.message
    except TimeoutError:
        error = f"no answer from {sock} within {timeout:g}s"
    except OSError as exc:
        error = f"{exc.filename or sock}: {exc.strerror or exc}"
    except (ValueError, KeyError, TypeError) as exc:
        error = f"{sock} answered something that is not memwardend's JSON-RPC ({exc})"
    if as_json:
        print(json.dumps({"client": __version__, "daemon": daemon, "daemon_error": error}, indent=2))
    else:
        print(f"memwardenctl {__version__}")
        print(f"daemon: memwardend {daemon['version']} (pid {daemon['pid']}, {sock})" if daemon
              else f"daemon: not reachable ({error})")
    return 0


def is_local(args: argparse.Namespace) -> bool:
    """Whether the command line is answered here rather than by one RPC call."""
    return (args.command == "config" and args.verb == "check") or args.command == "version"
