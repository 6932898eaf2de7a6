"""memwardend: the daemon's entry point. Runs in the foreground; systemd supervises it."""

from __future__ import annotations

import sys

# sqlite-utils imports numpy whenever it can (for numpy column types), and the `train` extra puts numpy in the
# same environment: ~20 MB of RSS the daemon never uses. Only the trainer subprocess may load it.
sys.modules.setdefault("numpy", None)  # before sqlite_utils is first imported, hence the late imports below
# structlog renders console tracebacks with rich whenever it can import it, and the `train` extra installs rich
# (through huggingface_hub): ~4 MB for output the daemon's JSON and journal logs never use; the console
# renderer formats plainly without it.
sys.modules.setdefault("rich", None)

import argparse
import asyncio
import os
import socket
import sqlite3
from pathlib import Path

from memwarden import __version__
from memwarden.cli.usage import run_quietly
from memwarden.config import ConfigError, locate_and_load
from memwarden.dirs import PathError, UnsafeDirectory
from memwarden.logs import configure_logging, get_logger
from memwarden.malloc import M_ARENA_MAX, mallopt
from memwarden.state.db import StateError

EX_CONFIG = 78  # sysexits.h; the unit's RestartPreventExitStatus= stops a restart loop on a bad config
EX_CANTCREAT = 73  # sysexits.h: a directory or file it must write cannot be (state, socket), or is taken
EX_NOPERM = 77  # sysexits.h: the socket's directory is not safe (another user may write it or owns it)
# glibc gives each thread that allocates an arena of its own (up to 8 per core). The daemon's threads are its
# executor's, doing short blocking reads, so one arena for all costs no waiting that shows, and ~1 MB of RSS
# less with everything on (BENCHMARKS.md, "Footprint").
ARENAS = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="memwardend", description=__doc__)
    p.add_argument("--config", type=Path, help="config file (default: $MEMWARDEN_CONFIG, "
                   "/etc/memwarden/memwarden.toml as root, else ~/.config/memwarden/memwarden.toml)")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit")
    p.add_argument("--print-default-config", action="store_true",
                   help="print the documented default config (etc/memwarden.toml) and exit")
    p.add_argument("--log-format", choices=("auto", "console", "json", "journal"),
                   help="override daemon.log_format")
    p.add_argument("--version", action="version", version=f"memwardend {__version__}")
    return p.parse_args(argv)


def held_by_another(path: Path) -> bool:
    """Whether a daemon already listens on the control socket: a second one must leave the state alone (it would
    roll back the first one's leases), so this is asked before the state is opened. Binding asks again."""
    try:
        parent = os.stat(path.parent)
    except OSError:
        return False
    if parent.st_uid not in (0, os.getuid()) or parent.st_mode & 0o022:
        return False  # not a directory of ours: nothing is sent there, and binding refuses it saying why
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5)
    try:
        probe.connect(str(path))
    except (TimeoutError, BlockingIOError):
        return True  # a listener whose backlog is full
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def socket_in_use(path: Path) -> int:
    get_logger().error("cannot start", error=f"another memwardend is already listening on {path}; stop it first, "
                                             "or give this one another daemon.socket")
    return EX_CANTCREAT


def main(argv: list[str] | None = None) -> int:
    return run_quietly(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.print_default_config:
        from memwarden.config.template import render_template

        print(render_template(), end="")
        return 0
    try:
        config = locate_and_load(args.config)
    except ConfigError as exc:
        from memwarden.cli.config_cmds import problems_text

        print(f"memwardend: {problems_text(exc)}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        print(f"{config.source or 'embedded defaults'}: OK")
        return 0
    configure_logging(config.daemon.log_level, args.log_format or config.daemon.log_format)
    activated = os.environ.get("LISTEN_PID") == str(os.getpid())  # systemd's socket: none of ours to bind
    if not activated and held_by_another(config.daemon.socket):
        return socket_in_use(config.daemon.socket)
    from memwarden.control.server import SocketInUse
    from memwarden.daemon import Daemon

    try:
        mallopt({M_ARENA_MAX: ARENAS})  # before the first thread
        return asyncio.run(Daemon(config, config_arg=args.config).run())
    except PathError as exc:
        get_logger().error("cannot start", error=str(exc))
        return EX_NOPERM if isinstance(exc, UnsafeDirectory) else EX_CANTCREAT
    except StateError as exc:
        get_logger().error("cannot open state", error=str(exc))
        return 1
    except sqlite3.Error as exc:
        # Damage open_state() could not see (a corrupt page under the leases or the alert history) is met while
        # the daemon reads its state at start: still one line naming the file and what to do, no traceback.
        from memwarden.state.db import DB_NAME
        from memwarden.state.health import describe

        get_logger().error("cannot open state", error=describe(config.daemon.state_dir / DB_NAME, exc))
        return 1
    except OSError as exc:
        get_logger().error("cannot start", error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 0
    except SocketInUse:  # a daemon that started listening after held_by_another() looked
        return socket_in_use(config.daemon.socket)


if __name__ == "__main__":
    sys.exit(main())
