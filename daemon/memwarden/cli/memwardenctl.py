"""memwardenctl: talk to memwardend over its control socket."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from memwarden import __version__, paths
from memwarden.cli import render
from memwarden.control.client import Client, ConnectError
from memwarden.control.protocol import RpcError

# command → (RPC method, renderer, help)
COMMANDS = {
    "status": ("status", render.status, "daemon version, uptime, last sample and active alerts"),
    "host": ("host", render.host, "host RAM, swap and memory pressure with their levels"),
    "alerts": ("alerts", render.alerts, "active alerts and recent history"),
    "reload": ("config.reload", render.reload, "re-read the config file (admin)"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="memwardenctl", description=__doc__)
    p.add_argument("--socket", type=Path, help="control socket (default: $MEMWARDEN_SOCKET or the daemon's)")
    p.add_argument("--json", action="store_true", help="print the raw JSON result")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer (default 30)")
    p.add_argument("--version", action="version", version=f"memwardenctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, helptext) in COMMANDS.items():
        cmd = sub.add_parser(name, help=helptext, description=helptext)
        if name == "alerts":
            cmd.add_argument("--limit", type=int, default=50, help="how many recent alerts (default 50)")
    call = sub.add_parser("call", help="call any RPC method: call METHOD [JSON-PARAMS]")
    call.add_argument("method")
    call.add_argument("params", nargs="?", default=None, help="params as a JSON object")
    return p.parse_args(argv)


def fail(message: str, code: int = 1) -> int:
    print(f"memwardenctl: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sock = args.socket or paths.client_socket(os.environ, os.getuid())
    params: dict[str, Any] | None = None
    if args.command == "call":
        method, renderer = args.method, None
        if args.params is not None:
            try:
                params = json.loads(args.params)
            except json.JSONDecodeError as exc:
                return fail(f"params are not JSON: {exc}", 2)
            if not isinstance(params, dict):
                return fail("params must be a JSON object", 2)
    else:
        method, renderer, _ = COMMANDS[args.command]
        if args.command == "alerts":
            params = {"limit": args.limit}
    try:
        with Client(sock, timeout=args.timeout) as client:
            result = client.call(method, params)
    except ConnectError as exc:
        return fail(str(exc), 3)
    except RpcError as exc:
        return fail(exc.message)
    except TimeoutError:
        return fail(f"no answer from {sock} within {args.timeout:g}s")
    except OSError as exc:
        return fail(f"{sock}: {exc.strerror or exc}", 3)
    if args.json or renderer is None:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(renderer(result))
    if args.command == "reload" and not result.get("reloaded"):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
