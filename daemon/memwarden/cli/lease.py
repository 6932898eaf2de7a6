"""`memwardenctl lease SIZE [options] -- CMD ARGS…`: run any command under a VRAM lease.

The lease is acquired (models evicted and the memory confirmed free), the command runs with
CUDA_VISIBLE_DEVICES set to the granted GPU, and when it exits — or is interrupted — the lease is released and
the evicted models are reloaded. While it runs, a second connection long-polls the lease: if the daemon asks
the holder to yield (preemption), the command gets SIGTERM to checkpoint and exit; with --requeue it is started
again once the lease can be granted again.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from memwarden.cli.leased import FORWARDED, LeasedCommand, exit_code
from memwarden.cli.usage import Parser
from memwarden.control.client import Client, ConnectError
from memwarden.control.protocol import RpcError
from memwarden.units import format_duration, format_size, parse_duration, parse_memory_size

USAGE = "memwardenctl lease SIZE [options] -- CMD [ARGS…]\n       memwardenctl lease list | release ID | preempt ID"
AFTER_DASHES = "memwardenctl lease SIZE [options] -- CMD ARGS…"


def parser() -> Parser:
    """The lease's options (also read by cli/completion.py)."""
    p = Parser(prog="memwardenctl lease", usage=USAGE, description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("size", nargs="?", metavar="SIZE",
                   help="VRAM to lease, e.g. 4GiB: GiB and MiB are 2^30 and 2^20 bytes, GB and MB 10^9 and 10^6 "
                        "(4GB is 3.7 GiB); a number with no unit is bytes and must be at least 1 MiB")
    p.add_argument("--gpu", default="auto", metavar="N|auto",
                   help="GPU index, or auto for the one needing the least eviction (default)")
    p.add_argument("--wait", default="0", metavar="DURATION",
                   help="how long to wait for the room (e.g. 10m; default: do not wait)")
    p.add_argument("--holder", metavar="NAME", help="a name for the lease (default: the command)")
    p.add_argument("--priority", type=int, default=0, metavar="N", help="higher is granted first (default 0)")
    p.add_argument("--preemptible", action="store_true",
                   help="serving may ask this lease back: the command gets SIGTERM and must checkpoint")
    p.add_argument("--requeue", action="store_true",
                   help="after a preemption, wait for the lease again and rerun the command")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """The options go anywhere before the first `--`, SIZE among them; everything after it is the command,
    passed on untouched even where it looks like an option."""
    p = parser()
    dashes = argv.index("--") if "--" in argv else len(argv)
    args, extra = p.parse_known_intermixed_args(argv[:dashes])
    args.command = argv[dashes + 1:]
    hint = "" if dashes < len(argv) else f"; the command goes after --: {AFTER_DASHES}"
    unknown = [w for w in extra if w.startswith("-")]
    if unknown:
        p.error(f"unrecognized option {unknown[0]!r}{hint}")
    if extra:
        p.error(f"{' '.join(extra)!r} after SIZE{hint or ': one SIZE only before --'}")
    if args.size is None:
        p.error(f"SIZE is missing: {AFTER_DASHES}")
    try:
        parse_memory_size(args.size)
    except ValueError as exc:
        p.error(f"SIZE: {exc}")
    if not args.command:
        p.error(f"no command given: {AFTER_DASHES}")
    try:
        args.wait_s = parse_duration(args.wait)
    except ValueError as exc:
        p.error(f"--wait: {exc}")
    if args.gpu != "auto" and not args.gpu.isdigit():
        p.error(f"--gpu must be a GPU index or auto, not {args.gpu!r}")
    return args


def say(message: str) -> None:
    print(f"memwardenctl: {message}", file=sys.stderr, flush=True)


class Watcher(threading.Thread):
    """Long-polls lease.watch on its own connection; on preemption, asks the command's group to stop."""

    def __init__(self, sock: Path, lease_id: str, command: LeasedCommand):
        super().__init__(daemon=True)
        self.sock, self.lease_id, self.command = sock, lease_id, command
        self.preempted = False
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with Client(self.sock, timeout=None) as c:
                while not self.done.is_set():
                    state = c.call("lease.watch", {"id": self.lease_id, "timeout": 60})["state"]
                    if state == "preempting":
                        self.preempted = True
                        say(f"lease {self.lease_id} preempted: serving needs the GPU; sending SIGTERM to the "
                            "command so it checkpoints")
                        if self.command.returncode is None:
                            self.command.signal(signal.SIGTERM)
                        return
                    if state == "released":
                        return
        except (ConnectError, RpcError, OSError):
            return


def run_once(sock: Path, args: argparse.Namespace) -> tuple[int, bool]:
    # The holder is this process, as the daemon reads it from the socket (SO_PEERCRED): no pid is passed.
    params: dict[str, Any] = {"size": args.size, "wait": args.wait_s,
                              "holder": args.holder or " ".join(args.command)[:200], "priority": args.priority,
                              "preemptible": args.preemptible}
    if args.gpu != "auto":
        params["gpu"] = int(args.gpu)
    try:
        with Client(sock, timeout=None) as c:
            lease = c.call("lease.acquire", params)
    except KeyboardInterrupt:
        say("interrupted while waiting for the lease; nothing was granted")
        return 130, False
    evicted = ", ".join(e["name"] for e in lease["evicted"]) or "nothing"
    say(f"lease {lease['id']}: {format_size(lease['size'])} on GPU {lease['gpu']} (evicted {evicted})")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(lease["gpu"]), CUDA_DEVICE_ORDER="PCI_BUS_ID",
               MEMWARDEN_LEASE_ID=lease["id"])
    command: LeasedCommand | None = None
    watcher: Watcher | None = None
    status = 125
    previous: dict[int, Any] = {}
    ended_by_daemon = False
    try:
        command = LeasedCommand.spawn(args.command, env)

        def forward(signum: int, _frame: Any) -> None:
            if command is not None:
                command.signal(signum)

        previous = {s: signal.signal(s, forward) for s in FORWARDED}
        # The daemon records the command among the lease's processes before it may start anything.
        with Client(sock, timeout=None) as c:
            state = c.call("lease.watch", {"id": lease["id"], "timeout": 0})["state"]
        if state == "released":
            say(f"lease {lease['id']} was released before the command could start; not running it")
            ended_by_daemon = True
            return 1, False
        command.start()
        watcher = Watcher(sock, lease["id"], command)
        watcher.start()
        status = exit_code(command.wait())
    finally:
        if watcher is not None:
            watcher.done.set()
        gone = command is None or command.end_group()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if gone and not ended_by_daemon:
            with Client(sock, timeout=None) as c:
                released = c.call("lease.release", {"id": lease["id"]})
            restored = [f"{r['name']} ({'ok' if r['ok'] else r.get('error', 'failed')})"
                        for r in released["restored"]]
            down = released.get("downtime_s")
            say(f"lease {lease['id']} released" + (f"; restored {', '.join(restored)}" if restored else "")
                + (f"; serving downtime {format_duration(down)}" if down is not None else ""))
        else:
            assert command is not None
            say(f"processes of the command's group {command.pid} survived SIGKILL; lease {lease['id']} is kept "
                "until they exit, and the daemon releases it then")
    return status, bool(watcher and watcher.preempted)


def main(sock: Path, argv: list[str]) -> int:
    args = parse(argv)
    while True:
        try:
            code, preempted = run_once(sock, args)
        except ConnectError as exc:
            say(str(exc))
            return 3
        except RpcError as exc:
            say(exc.message)
            return 1
        except OSError as exc:  # the socket's own failures: a path too long, a reset connection
            say(f"{exc.filename or sock}: {exc.strerror or exc}")
            return 3
        except (ValueError, KeyError) as exc:  # a line that is not JSON, or JSON-RPC without a result
            say(f"{sock} answered something that is not memwardend's JSON-RPC ({exc})")
            return 3
        if not (preempted and args.requeue):
            return code
        say("requeued: waiting for the lease again")
        args.wait_s = max(args.wait_s, 7 * 86400)
