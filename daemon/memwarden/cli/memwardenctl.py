"""memwardenctl: talk to memwardend over its control socket."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memwarden import __version__, paths
from memwarden.cli import config_cmds, render, render_containers, render_memories, setup_training
from memwarden.cli.memory_import import import_memories
from memwarden.cli.usage import Parser, fail, run_quietly
from memwarden.control.client import Client, ConnectError
from memwarden.control.protocol import RpcError

# command → (RPC method, renderer, help)
COMMANDS = {
    "status": ("status", render.status, "daemon version, uptime, last sample and active alerts"),
    "host": ("host", render.host, "host RAM, swap and memory pressure with their levels"),
    "alerts": ("alerts", render.alerts, "active alerts and recent history"),
    "reload": ("config.reload", render.reload, "re-read the config file (admin)"),
    "gpu": ("gpu", render.gpu, "each GPU's VRAM, temperature, processes and budgets; Ollama's models; leases"),
    "diagnostics": ("diagnostics", render.diagnostics, "the daemon's own footprint: RSS, CPU, threads, open fds, "
                    "clients, and whether heavy modules were loaded"),
}
# Words of 0.1 that name something else now (the RPC methods were renamed with them: control/registry.py).
RENAMED_COMMANDS = {"leaks": "memwardenctl containers leaks", "restart-history": "memwardenctl containers history"}
RENAMED_ADAPTER_VERBS = {v: f"memwardenctl models {v}" for v in ("load", "evict", "pin", "unpin")}
LEASE_VERBS = {"list": ("lease.list", render.leases), "release": ("lease.release", render.lease),
               "preempt": ("lease.preempt", render.lease)}
MODEL_VERBS = {"load": "models.load", "evict": "models.evict", "pin": "models.pin", "unpin": "models.unpin"}
ADAPTER_VERBS = {"list": ("adapters.list", render.adapters), "show": ("adapters.show", render.adapter),
                 "versions": ("adapters.versions", render.versions), "rollback": ("adapters.rollback", render.rollback)}
CONTAINER_VERBS = {"list": ("containers.list", render_containers.containers),
                   "leaks": ("containers.leaks", render_containers.leaks),
                   "history": ("containers.history", render_containers.container_history),
                   "restart": ("containers.restart", render_containers.restarted)}
TRAIN_VERBS = {"start": "train.start", "status": "train.status", "history": "train.history", "cancel": "train.cancel"}
MEMORY_VERBS = {"add": ("memories.add", render_memories.memory_added),
                "list": ("memories.list", render_memories.memories),
                "count": ("memories.count", render_memories.memory_counts),
                "show": ("memories.show", render_memories.memory)}


@dataclass(frozen=True)
class Request:
    """One RPC call a command line asks for, and how its result is shown (None: as JSON)."""

    method: str
    params: dict[str, Any] | None
    renderer: Callable[[Any], str] | None


class _Verbatim(Parser):
    """A subcommand whose words reach its own parser untouched: `lease` takes its options before and after
    SIZE, up to `--`, and a command after it that may look like options (see lease.parse)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        namespace = namespace if namespace is not None else argparse.Namespace()
        namespace.words = list(args or ())
        return namespace, []


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: a mistake exits 2 with one line saying what is wrong."""
    p = Parser(prog="memwardenctl", description=__doc__)
    p.add_argument("--socket", type=Path, help="control socket (default: $MEMWARDEN_SOCKET or the daemon's)")
    p.add_argument("--json", action="store_true", help="print the raw JSON result")
    p.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="seconds to wait for an answer (default 30)")
    p.add_argument("--version", action="version", version=f"memwardenctl {__version__}")
    p.renamed = RENAMED_COMMANDS
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, helptext) in COMMANDS.items():
        cmd = sub.add_parser(name, help=helptext, description=helptext)
        if name == "alerts":
            cmd.add_argument("--limit", type=int, default=50, help="how many recent alerts (default 50)")
    sub.add_parser("lease", help="SIZE [--gpu N|auto] [--wait D] [--holder NAME] [--priority N] [--preemptible] "
                   "[--requeue] -- CMD…: run a command under a VRAM lease; or: lease list | release ID | preempt ID")
    sub.choices["lease"] = _Verbatim(prog="memwardenctl lease", add_help=False)
    containers = sub.add_parser("containers", help="memory per container: containers [list] | leaks | history "
                                "[--limit N] | restart NAME (admin)")
    containers.add_argument("verb", nargs="?", choices=list(CONTAINER_VERBS), default="list")
    containers.add_argument("name", nargs="?")
    containers.add_argument("--limit", type=int, default=50, help="history: how many restarts (default 50)")
    models = sub.add_parser("models", help="Ollama's models as the scheduler knows them; or: models "
                            "load|evict|pin|unpin NAME (admin)")
    models.add_argument("verb", nargs="?", choices=list(MODEL_VERBS))
    models.add_argument("name", nargs="?")
    adapters = sub.add_parser("adapters", help="the LoRA adapters learned from memories: adapters [list] | show "
                              "NAME | versions NAME | rollback NAME (admin)")
    adapters.renamed = RENAMED_ADAPTER_VERBS
    adapters.add_argument("verb", nargs="?", choices=list(ADAPTER_VERBS), default="list")
    adapters.add_argument("name", nargs="?")
    add_memories_parser(sub)
    train = sub.add_parser("train", help="training runs: train start ADAPTER | status | watch [ADAPTER] | history "
                           "| cancel ADAPTER")
    train.add_argument("verb", choices=[*TRAIN_VERBS, "watch"])
    train.add_argument("adapter", nargs="?")
    train.add_argument("--limit", type=int, default=20)
    # SUPPRESS: `memwardenctl --json train watch` must not be undone by this option's default.
    train.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="watch: one JSON object per change of progress")
    config_cmds.add_parsers(sub)
    setup_training.add_parser(sub)
    completion = sub.add_parser("completion", help="completion bash|zsh: print the shell completion script",
                                description="print memwardenctl's completion script for bash or zsh")
    completion.add_argument("shell", choices=["bash", "zsh"])
    model = sub.add_parser("model", help="model init-demo DIR: build a tiny offline Llama base model to learn on")
    model.add_argument("verb", choices=["init-demo"])
    model.add_argument("dir", type=Path)
    model.add_argument("--pretrain-steps", type=_steps, default=None, metavar="N",
                       help="pre-training steps on the generated corpus (default 600, a minute or two of CPU; "
                            "0: the model as initialised)")
    call = sub.add_parser("call", help="call any RPC method: call METHOD [JSON-PARAMS]")
    call.add_argument("method")
    call.add_argument("params", nargs="?", default=None, help="params as a JSON object")
    args = p.parse_args(argv)
    args.parser = p  # completion is generated from it
    if args.command == "lease":
        _parse_lease(args)
    elif args.command == "containers" and (args.verb == "restart") != (args.name is not None):
        containers.error("restart needs the container's NAME" if args.verb == "restart"
                         else f"{args.verb} takes no NAME")
    elif args.command == "models" and args.verb and not args.name:
        models.error(f"{args.verb} needs the model's NAME")
    elif args.command == "adapters" and (args.verb == "list") != (args.name is None):
        adapters.error("list takes no NAME" if args.verb == "list" else f"{args.verb} needs the adapter's NAME")
    elif args.command == "train" and args.verb in ("start", "cancel") and not args.adapter:
        train.error(f"{args.verb} needs the ADAPTER")
    elif args.command == "call" and args.params is not None:
        try:
            args.params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            call.error(f"params are not JSON: {exc}")
        if not isinstance(args.params, dict):
            call.error("params must be a JSON object")
    return args


def _parse_lease(args: argparse.Namespace) -> None:
    """`lease list | release ID | preempt ID`, or a lease for a command (lease.parse)."""
    words = args.words
    args.lease_verb = words[0] if words and words[0] in LEASE_VERBS else None
    if args.lease_verb is None:
        from memwarden.cli import lease

        args.lease = lease.parse(words)
        return
    verb = Parser(prog=f"memwardenctl lease {args.lease_verb}")
    if args.lease_verb != "list":
        verb.add_argument("id", metavar="ID", help="the lease's id (memwardenctl lease list shows them)")
    args.lease_id = getattr(verb.parse_args(words[1:]), "id", None)


def add_memories_parser(sub: Any) -> None:
    memories = sub.add_parser("memories", help="the memory store: add | import FILE.jsonl | list | count | show ID",
                              description="the memory store: memories that become LoRA adapters")
    verbs = memories.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add one memory (admin)")
    add.add_argument("--profile", required=True, help="whose memory it is")
    add.add_argument("--kind", required=True, help="conversation, inner_dialogue, reflection, dream, journal, …")
    add.add_argument("--importance", required=True, type=int, help="1 to 10")
    add.add_argument("--response", help="the reply, for a conversation")
    add.add_argument("--created-at", help="seconds since 1970 or an ISO 8601 date-time (default: now)")
    add.add_argument("--cue", help="what the memory is about, as a prompt would name it; a newer memory with the same "
                     "cue replaces it")
    add.add_argument("--title", help="a title (the cue when there is no --cue)")
    add.add_argument("--tag", dest="tags", action="append", help="a tag (repeatable)")
    add.add_argument("content", help="the memory's text ('-': read it from stdin)")
    imp = verbs.add_parser("import", help="import a JSONL file: all lines or none, bad lines reported (admin)")
    imp.add_argument("file", type=Path, help="one JSON object per line: profile, kind, content, importance, "
                     "and optionally response, created_at, cue, title, tags; kind preference: prompt, chosen, "
                     "rejected ('-': stdin)")
    imp.add_argument("--import-id", help="the import's id (default: a fresh one); an import already committed "
                     "under this id is not imported again")
    imp.add_argument("--progress", action="store_true", default=None,
                     help="show progress on stderr even when it is not a terminal (default: on a terminal only)")
    lst = verbs.add_parser("list", help="memories, newest first")
    for name in ("profile", "kind", "adapter"):
        lst.add_argument(f"--{name}", help=f"only this {name}")
    state = lst.add_mutually_exclusive_group()
    state.add_argument("--consolidated", dest="consolidated", action="store_true", default=None,
                       help="only memories already learned by a run")
    state.add_argument("--unconsolidated", dest="consolidated", action="store_false",
                       help="only memories not learned yet")
    lst.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    lst.add_argument("--offset", type=int, default=0, help="skip this many of the newest")
    count = verbs.add_parser("count", help="memories per profile, adapter and kind; importance per adapter")
    for name in ("profile", "kind", "adapter"):
        count.add_argument(f"--{name}", help=f"only this {name}")
    show = verbs.add_parser("show", help="one memory in full")
    show.add_argument("id", type=int)


def memory_params(args: argparse.Namespace) -> dict[str, Any]:
    if args.verb == "add":
        content = sys.stdin.buffer.read().decode() if args.content == "-" else args.content
        created: Any = args.created_at
        if created is not None:
            with contextlib.suppress(ValueError):  # else an ISO 8601 date-time: the daemon parses it
                created = float(created)
        return {k: v for k, v in {"profile": args.profile, "kind": args.kind, "content": content,
                                  "importance": args.importance, "response": args.response,
                                  "created_at": created, "cue": args.cue, "title": args.title,
                                  "tags": args.tags}.items() if v is not None}
    if args.verb == "show":
        return {"id": args.id}
    names = ("profile", "kind", "adapter") + (("consolidated", "limit", "offset") if args.verb == "list" else ())
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def talking_to_daemon(sock: Path, timeout: float, action: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, what `action` returned), or (False, the exit status) after a one-line reason on stderr."""
    try:
        return True, action()
    except ConnectError as exc:
        return False, fail(str(exc), 3)
    except RpcError as exc:
        return False, fail(exc.message)
    except TimeoutError:
        return False, fail(f"no answer from {sock} within {timeout:g}s")
    except OSError as exc:
        return False, fail(f"{exc.filename or sock}: {exc.strerror or exc}", 3)
    except (ValueError, KeyError) as exc:  # a line that is not JSON, or JSON-RPC without a result
        return False, fail(f"{sock} answered something that is not memwardend's JSON-RPC ({exc})", 3)


def _steps(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, 0 or more, got {text!r}")
    return n


def init_demo(directory: Path, pretrain_steps: int | None) -> int:
    """Build the demo base model in this process's Python (it needs the `train` extra: torch, tokenizers)."""
    # The train extra is checked for before anything is said or written, without importing it here.
    missing = [name for name in ("torch", "tokenizers", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        return fail(f"model init-demo needs the train extra (no {', '.join(missing)}); install it with: "
                    "sudo memwardenctl setup training")
    try:
        from memwarden.training.demo_model import DEFAULT_PRETRAIN_STEPS, build_demo_model

        steps = DEFAULT_PRETRAIN_STEPS if pretrain_steps is None else pretrain_steps
        if steps:
            print(f"pre-training the demo base for {steps} steps (about {steps // 5} s of CPU)", flush=True)
        out = build_demo_model(directory, pretrain_steps=steps)
    except ImportError as exc:
        return fail(f"model init-demo needs the train extra ({exc}); install it with: "
                    "sudo memwardenctl setup training")
    except OSError as exc:
        return fail(f"{exc.filename or directory}: {exc.strerror or exc}")
    print(f"demo base model in {out}: point learning.base_model at it")
    return 0


def local(args: argparse.Namespace) -> bool:
    """Whether the command line is answered here, or by more than one RPC call, rather than by request()."""
    return (config_cmds.is_local(args) or args.command in ("completion", "setup")
            or (args.command == "train" and args.verb == "watch"))


def run_local(args: argparse.Namespace, sock: Path) -> int:
    if args.command == "completion":
        from memwarden.cli.completion import script

        print(script(args.parser, args.shell, LEASE_VERBS), end="")
        return 0
    if args.command == "version":
        return config_cmds.version(sock, args.timeout, args.json)
    if args.command == "config":
        return config_cmds.check(args.file, args.json)
    if args.command == "setup":
        return setup_training.run(args)
    from memwarden.cli.train_watch import watch

    return talking_to_daemon(sock, args.timeout, lambda: watch(sock, args.timeout, args.adapter, args.json))[1]


def request(args: argparse.Namespace) -> Request:
    """The RPC call a parsed command line makes (every command but a lease's run, an import and init-demo)."""
    params: dict[str, Any] | None = None
    renderer: Callable[[Any], str] | None
    if args.command == "lease":
        method, renderer = LEASE_VERBS[args.lease_verb]
        if args.lease_id is not None:
            params = {"id": args.lease_id}
    elif args.command == "containers":
        method, renderer = CONTAINER_VERBS[args.verb]
        if args.verb == "restart":
            params = {"name": args.name}
        elif args.verb == "history":
            params = {"limit": args.limit}
    elif args.command == "train":
        method = TRAIN_VERBS[args.verb]
        renderer = {"start": render.run, "status": render.train_status, "history": render.runs,
                    "cancel": render.run}[args.verb]
        if args.verb in ("start", "cancel"):
            params = {"adapter": args.adapter}
        elif args.verb == "history":
            params = {"limit": args.limit, **({"adapter": args.adapter} if args.adapter else {})}
    elif args.command == "models":
        method, renderer = "models.list", render.models
        if args.verb:
            method, renderer, params = MODEL_VERBS[args.verb], render.model_result, {"name": args.name}
    elif args.command == "adapters":
        method, renderer = ADAPTER_VERBS[args.verb]
        if args.name is not None:
            params = {"name": args.name}
    elif args.command == "memories":
        method, renderer = MEMORY_VERBS[args.verb]
        params = memory_params(args)
    elif args.command == "config":
        method, renderer = "config.show", render.config_show
        params = {"secrets": True} if args.secrets else None
    elif args.command == "call":
        method, renderer, params = args.method, None, args.params
    else:
        method, renderer, _ = COMMANDS[args.command]
        if args.command == "alerts":
            params = {"limit": args.limit}
    return Request(method, params, renderer)


def main(argv: list[str] | None = None) -> int:
    return run_quietly(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    sock = args.socket or paths.client_socket(os.environ, os.getuid())
    if args.command == "lease" and args.lease_verb is None:
        from memwarden.cli import lease

        return lease.main(sock, args.words)
    if args.command == "model":
        return init_demo(args.dir, args.pretrain_steps)
    if local(args):
        return run_local(args, sock)
    if args.command == "memories" and args.verb == "import":
        _, code = talking_to_daemon(sock, args.timeout, lambda: import_memories(
            sock, args.file, args.timeout, args.json, args.import_id, args.progress))
        return code
    try:
        req = request(args)
        json.dumps(req.params, ensure_ascii=False).encode()  # an argument that was not UTF-8 cannot be sent
    except UnicodeError as exc:
        where = "stdin" if getattr(args, "content", None) == "-" else "an argument"
        return fail(f"{where} is not UTF-8 text ({exc.reason} at position {exc.start})", 2)

    def call() -> Any:
        with Client(sock, timeout=args.timeout) as client:
            return client.call(req.method, req.params)

    ok, result = talking_to_daemon(sock, args.timeout, call)
    if not ok:
        return result
    if args.json or req.renderer is None:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(req.renderer(result))
    if args.command == "reload" and not result.get("reloaded"):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
