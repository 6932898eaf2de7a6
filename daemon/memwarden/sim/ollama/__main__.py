"""python -m memwarden.sim.ollama --sim-file PATH [--sim-gpus 12GiB,12GiB] --model NAME=SIZE … (see options.py)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from memwarden.gpu import simfile

from .gpus import check_gpus
from .models import Registry
from .options import OptionError, Options, parse
from .server import Simulator, serve, setup_logging


def _sim_file(opts: Options) -> None:
    if opts.create_gpus and not opts.sim_file.exists():
        simfile.create(opts.sim_file, [{"index": i, "name": f"Sim {size / 1024**3:g}G", "total_bytes": size}
                                       for i, size in enumerate(opts.create_gpus)])


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse(argv)
    except OptionError as exc:
        print(f"ollama sim: {exc}", file=sys.stderr)
        return 2
    setup_logging()
    own_dir = opts.models_dir is None
    models_dir = opts.models_dir or Path(tempfile.mkdtemp(prefix="ollama-sim-models-"))
    try:
        try:
            _sim_file(opts)
            gpus = check_gpus(opts.sim_file, opts.gpus)
            registry = Registry(models_dir, opts.models)
        except (OSError, ValueError, simfile.SimFileError) as exc:
            print(f"ollama sim: {exc}", file=sys.stderr)
            return 2
        opts.settings.max_loaded = opts.settings.max_loaded or 3 * len(gpus)  # Ollama's 0: 3 per GPU
        sim = Simulator(opts.settings, registry, opts.sim_file, gpus)
        return asyncio.run(serve(sim, opts.host, opts.port, opts.exit_with_parent, preload=opts.load))
    except KeyboardInterrupt:  # a Ctrl-C before the loop's own handler is in place
        return 130
    finally:
        if own_dir:
            shutil.rmtree(models_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
