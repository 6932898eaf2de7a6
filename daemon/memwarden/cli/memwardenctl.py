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
    "gpu": ("gpu", render.gpu, "each GPU's VRAM, temperature, processes and budgets; Ollama's models; leases"),
    "leaks": ("leaks", render.leaks, "containers that leak or hold memory idle, with slope and projection"),
    "restart-history": ("restart_history", render.restart_history, "container restarts and whether they helped"),
}
LEASE_VERBS = {"list": ("lease.list", render.leases), "release": ("lease.release", render.lease),
               "preempt": ("lease.preempt", render.lease)}
ADAPTER_VERBS = {"load": "adapters.load", "evict": "adapters.evict", "pin": "adapters.pin", "unpin": "adapters.unpin"}


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
    lease = sub.add_parser("lease", help="SIZE [--gpu N|auto] [--wait D] -- CMD…: run a command under a VRAM "
                           "lease; or: lease list | release ID | preempt ID", add_help=False)
    lease.add_argument("rest", nargs=argparse.REMAINDER)
    containers = sub.add_parser("containers", help="memory per container; or: containers restart NAME (admin)")
    containers.add_argument("verb", nargs="?", choices=["restart"])
    containers.add_argument("name", nargs="?")
    adapters = sub.add_parser("adapters", help="the scheduler's models; or: adapters load|evict|pin|unpin NAME")
    adapters.add_argument("verb", nargs="?", choices=sorted(ADAPTER_VERBS))
    adapters.add_argument("name", nargs="?")
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
    if args.command == "lease" and (not args.rest or args.rest[0] not in LEASE_VERBS):
        from memwarden.cli import lease

        return lease.main(sock, args.rest or ["--help"])
    if args.command == "lease":
        verb, rest = args.rest[0], args.rest[1:]
        method, renderer = LEASE_VERBS[verb]
        if verb != "list":
            if len(rest) != 1:
                return fail(f"usage: memwardenctl lease {verb} ID", 2)
            params = {"id": rest[0]}
    elif args.command == "containers":
        method, renderer = "containers", render.containers
        if args.verb:
            if not args.name:
                return fail("usage: memwardenctl containers restart NAME", 2)
            method, renderer, params = "containers.restart", render.restarted, {"name": args.name}
    elif args.command == "adapters":
        method, renderer = "adapters", render.adapters
        if args.verb:
            if not args.name:
                return fail(f"usage: memwardenctl adapters {args.verb} NAME", 2)
            method, renderer, params = ADAPTER_VERBS[args.verb], render.adapter_result, {"name": args.name}
    elif args.command == "call":
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
