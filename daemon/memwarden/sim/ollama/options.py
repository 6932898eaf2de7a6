"""The command line of `python -m memwarden.sim.ollama`: parsed and checked here, whole, before anything starts.

Every bad value is one line naming the option (exit status 2); nothing here touches the network or the sim file
beyond reading it.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwarden.loopback import is_loopback
from memwarden.units import parse_size

from .goformat import DurationError, normalize_name, parse_env_keep_alive
from .runners import Settings

DEFAULT_LISTEN = "127.0.0.1:11434"  # Ollama's own default, so memwarden's default ollama.url finds it


class OptionError(ValueError):
    """A bad command line; the message names the option."""


@dataclass
class Options:
    sim_file: Path
    host: str
    port: int
    gpus: list[int] | None  # None: every GPU in the sim file
    create_gpus: list[int]  # sizes in bytes of the GPUs to create the sim file with (empty: it must exist)
    models: list[dict[str, Any]]
    load: list[str]
    models_dir: Path | None
    settings: Settings
    exit_with_parent: bool = False
    warnings: list[str] = field(default_factory=list)


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m memwarden.sim.ollama",
        description="An Ollama simulator: Ollama's HTTP API with its scheduler's memory behaviour (asynchronous "
                    "unloads, lingering VRAM, eviction by keep_alive), booking each loaded model's VRAM in a "
                    "simulated-GPU file that memwardend (gpu.backend = \"sim\") reads. No model runs: answers "
                    "are canned. See docs/simulator.md.",
        epilog="Example: python -m memwarden.sim.ollama --sim-file /tmp/gpu.json --sim-gpus 12GiB,12GiB "
               "--model llama3.2:3b=6GiB --model qwen2.5:7b=6GiB --load llama3.2:3b --load qwen2.5:7b")
    where = p.add_argument_group("where")
    where.add_argument("--listen", default=None, metavar="HOST:PORT",
                       help=f"address to serve on (default: $OLLAMA_HOST or {DEFAULT_LISTEN}; port 0 picks a free "
                            "one). Loopback only unless --allow-remote")
    where.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback --listen address (the /_sim/ hooks reconfigure the server)")
    where.add_argument("--sim-file", type=Path, required=True, metavar="PATH", help="the simulated-GPU JSON file")
    where.add_argument("--sim-gpus", default="", metavar="SIZE[,SIZE…]",
                       help="create --sim-file with GPUs of these sizes (e.g. 12GiB,12GiB) if it does not exist")
    where.add_argument("--gpu", default="all", metavar="all|N[,N…]",
                       help="the sim GPUs runners may be placed on (default: all in the file)")
    models = p.add_argument_group("models")
    models.add_argument("--model", action="append", default=[], metavar="NAME=SIZE",
                        help="install a model of this loaded size (e.g. llama3.2:3b=6GiB); repeatable")
    models.add_argument("--models", type=Path, default=None, metavar="FILE.json",
                        help="install the models of this JSON list (name, size and details; see docs/simulator.md)")
    models.add_argument("--load", action="append", default=[], metavar="NAME",
                        help="load this model before serving, with the default keep_alive; repeatable, in order")
    models.add_argument("--models-dir", type=Path, default=None, metavar="DIR",
                        help="where blobs live (sparse weight files, uploaded adapters); default: a temporary "
                             "directory removed at exit")
    behave = p.add_argument_group("behaviour (Ollama's environment variables set the defaults)")
    behave.add_argument("--keep-alive", default=_env("OLLAMA_KEEP_ALIVE", "5m"), metavar="DURATION",
                        help="default keep_alive, a Go duration; negative: forever (OLLAMA_KEEP_ALIVE; default 5m)")
    behave.add_argument("--load-seconds", type=float, default=0.05, metavar="S",
                        help="how long a load takes (default 0.05)")
    behave.add_argument("--unload-linger", type=float, default=2.0, metavar="S",
                        help="seconds an unloading runner keeps its VRAM after Ollama answered (default 2.0)")
    behave.add_argument("--max-loaded", type=int, metavar="N",
                        default=_env("OLLAMA_MAX_LOADED_MODELS", "0"),  # a string default goes through type=int too
                        help="OLLAMA_MAX_LOADED_MODELS (0: 3 per GPU)")
    behave.add_argument("--max-queue", type=int, metavar="N",
                        default=_env("OLLAMA_MAX_QUEUE", "512"),  # a string default goes through type=int too
                        help="OLLAMA_MAX_QUEUE: pending requests beyond it get 503 (default 512)")
    behave.add_argument("--num-parallel", type=int, metavar="N",
                        default=_env("OLLAMA_NUM_PARALLEL", "1"),  # a string default goes through type=int too
                        help="OLLAMA_NUM_PARALLEL: requests one runner serves at once (default 1)")
    behave.add_argument("--chunk-delay", type=float, default=0.001, metavar="S",
                        help="seconds between streamed chunks (default 0.001)")
    behave.add_argument("--response", default=None, metavar="TEXT", help="the canned answer's text")
    behave.add_argument("--exit-with-parent", action="store_true",
                        help="stop (as on SIGTERM) when the parent process dies")
    return p


def split_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT", "[::1]:PORT" or ":PORT" (loopback) → (host, port)."""
    text = text.strip().removeprefix("http://")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, "11434"
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise OptionError(f"--listen: {text!r} is not HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise OptionError(f"--listen: port {port} is out of range")
    return host, port




def parse_model(text: str) -> dict[str, Any]:
    name, sep, size = text.partition("=")
    if not sep or not name.strip():
        raise OptionError(f"--model: {text!r} is not NAME=SIZE (e.g. llama3.2:3b=6GiB)")
    try:
        nbytes = parse_size(size.strip())
    except ValueError as exc:
        raise OptionError(f"--model {name}: {exc}") from None
    if nbytes <= 0:
        raise OptionError(f"--model {name}: the size must be above 0")
    return {"name": name.strip(), "size": nbytes}


def parse_gpus(text: str) -> list[int] | None:
    if text.strip() == "all":
        return None
    try:
        out = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OptionError(f"--gpu: {text!r} is not 'all' or GPU indices such as 0,1") from None
    if not out or any(i < 0 for i in out):
        raise OptionError(f"--gpu: {text!r} is not 'all' or GPU indices such as 0,1")
    return sorted(set(out))


def parse_sizes(text: str) -> list[int]:
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            sizes.append(parse_size(part))
        except ValueError as exc:
            raise OptionError(f"--sim-gpus: {exc}") from None
        if sizes[-1] <= 0:
            raise OptionError("--sim-gpus: a GPU's size must be above 0")
    return sizes


def _models_file(path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(path.read_text())
    except OSError as exc:
        raise OptionError(f"--models: cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise OptionError(f"--models: {path} is not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise OptionError(f"--models: {path}: expected a JSON list of models")
    return entries


def parse(argv: list[str] | None = None) -> Options:
    """Parse and check the command line; argparse's own errors exit 2, ours raise OptionError."""
    args = parser().parse_args(argv)
    host, port = split_listen(args.listen or _env("OLLAMA_HOST", DEFAULT_LISTEN))
    if not is_loopback(host) and not args.allow_remote:
        raise OptionError(f"--listen: {host} is not a loopback address; add --allow-remote to serve on it")
    try:
        keep_alive = parse_env_keep_alive(args.keep_alive)
    except (DurationError, ValueError):
        raise OptionError(f"--keep-alive: invalid duration {args.keep_alive!r}") from None
    for name in ("load_seconds", "unload_linger", "chunk_delay"):
        if getattr(args, name) < 0:
            raise OptionError(f"--{name.replace('_', '-')}: must not be negative")
    for name in ("max_loaded", "max_queue", "num_parallel"):
        if getattr(args, name) < 0:
            raise OptionError(f"--{name.replace('_', '-')}: must not be negative")
    models = (_models_file(args.models) if args.models else []) + [parse_model(m) for m in args.model]
    names = {normalize_name(m["name"]) for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)}
    for wanted in args.load:
        if normalize_name(wanted) not in names:
            raise OptionError(f"--load {wanted}: no such model installed (add --model {wanted}=SIZE)")
    settings = Settings(unload_linger=args.unload_linger, load_seconds=args.load_seconds, keep_alive_ns=keep_alive,
                        max_loaded=args.max_loaded, max_queue=args.max_queue,
                        num_parallel=max(1, args.num_parallel), chunk_delay=args.chunk_delay)
    if args.response is not None:
        settings.response = args.response
    return Options(sim_file=args.sim_file, host=host, port=port, gpus=parse_gpus(args.gpu),
                   create_gpus=parse_sizes(args.sim_gpus), models=models, load=list(args.load),
                   models_dir=args.models_dir, settings=settings, exit_with_parent=args.exit_with_parent)
