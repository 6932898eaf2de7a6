"""CLI: python -m support.ollama_double --sim-file PATH --models MODELS.json [options]  (see __init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from memwarden.gpu.simfile import SimFileError

from .goformat import DurationError, parse_env_keep_alive
from .models import Registry
from .scheduler import Settings
from .server import Double, check_gpu, serve, setup_logging


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m support.ollama_double",
                                description="A faithful Ollama test double that books VRAM in a sim-GPU file.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--sim-file", type=Path, required=True, help="the simulated-GPU JSON file")
    p.add_argument("--gpu", type=int, default=0, help="index of the sim GPU the runners book on")
    p.add_argument("--models", type=Path, required=True, help="JSON list of installed models")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where blobs live (sparse weight files, uploaded adapters); default: a fresh temp dir")
    p.add_argument("--unload-linger", type=float, default=2.0,
                   help="seconds a runner keeps its VRAM after its unload starts")
    p.add_argument("--load-seconds", type=float, default=0.05, help="how long a load takes")
    p.add_argument("--keep-alive", default=_env("OLLAMA_KEEP_ALIVE", "5m"), help="default keep_alive (Go duration)")
    p.add_argument("--max-loaded", type=int, default=int(_env("OLLAMA_MAX_LOADED_MODELS", "0")),
                   help="OLLAMA_MAX_LOADED_MODELS; 0 = 3 x GPUs = 3")
    p.add_argument("--max-queue", type=int, default=int(_env("OLLAMA_MAX_QUEUE", "512")))
    p.add_argument("--num-parallel", type=int, default=int(_env("OLLAMA_NUM_PARALLEL", "1")))
    p.add_argument("--chunk-delay", type=float, default=0.001, help="seconds between streamed chunks")
    p.add_argument("--response", default=None, help="the canned answer text")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop (SIGTERM) when the parent process dies (PR_SET_PDEATHSIG)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging()
    try:
        keep_alive = parse_env_keep_alive(args.keep_alive)
    except (DurationError, ValueError):
        print(f"--keep-alive: invalid duration {args.keep_alive!r}", file=sys.stderr)
        return 2
    settings = Settings(unload_linger=args.unload_linger, load_seconds=args.load_seconds, keep_alive_ns=keep_alive,
                        max_loaded=args.max_loaded or 3, max_queue=args.max_queue,
                        num_parallel=max(1, args.num_parallel), chunk_delay=args.chunk_delay)
    if args.response is not None:
        settings.response = args.response
    try:
        entries = json.loads(args.models.read_text())
        if not isinstance(entries, list):
            raise ValueError("expected a JSON list of models")
        check_gpu(args.sim_file, args.gpu)
        models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="ollama-double-models-"))
        registry = Registry(models_dir, entries)
    except (OSError, ValueError, SimFileError) as exc:
        print(f"ollama double: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(Double(settings, registry, args.sim_file, args.gpu), args.host, args.port,
                             args.exit_with_parent))


if __name__ == "__main__":
    sys.exit(main())
