"""The demo base model for the tests, built once and kept between sessions.

`memwardenctl model init-demo` pre-trains the model, which takes a while on a busy machine; the tests only read
it. A build is keyed by the sources it is made of (training/demo_*.py), the pre-training steps and the versions
of torch, transformers and tokenizers, and kept under `$XDG_CACHE_HOME/memwarden-tests` (else ~/.cache): a
change to any of them builds a new one. It is built into a temporary directory and renamed into place under a
lock, so a directory under its key is always complete, and concurrent sessions build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import memwarden
from support.daemon import BIN

SOURCES = ("demo_model.py", "demo_corpus.py", "demo_pretrain.py")
LIBRARIES = ("torch", "transformers", "tokenizers")


def key(steps: int) -> str:
    h = hashlib.sha256(f"steps={steps}".encode())
    for name in SOURCES:
        h.update((Path(memwarden.__file__).parent / "training" / name).read_bytes())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none".encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memwarden-tests"


def demo_base(steps: int, timeout: float) -> Path:
    """The directory of a complete demo base pre-trained for `steps` steps, built now if it is not cached."""
    root = cache_root()
    out = root / f"demo-base-{key(steps)}"
    if out.is_dir():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_dir():  # built by another session while this one waited
            return out
        tmp = root / f".{out.name}.build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        run = subprocess.run([BIN / "memwardenctl", "model", "init-demo", str(tmp), "--pretrain-steps", str(steps)],
                             capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if run.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"model init-demo exited {run.returncode}: {run.stderr[-2000:]}")
        tmp.rename(out)
    return out
