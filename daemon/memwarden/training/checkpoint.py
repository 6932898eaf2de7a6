"""Atomic checkpoints under output_dir/checkpoints/step-N.

A checkpoint is written into a hidden temp directory — trainable.safetensors (the trainable weights),
anchor.safetensors (θ*, EWC's reference), state.pt (optimizer, scheduler, RNG states) and meta.json last —
each file fsync'd, then renamed into place with os.replace: a crash (kill -9, power) leaves either the whole
checkpoint or none of it, never a torn one. The last KEEP complete checkpoints are kept; temp directories left by
a crash are removed at the next start. `latest()` is the newest directory with a meta.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

KEEP = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, newest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / "meta.json").is_file():
            found.append((int(m.group(1)), child))
    return sorted(found, reverse=True)


def clean_temp(root: Path) -> None:
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(TMP_PREFIX):
                shutil.rmtree(child, ignore_errors=True)


def save(
    root: Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f"{TMP_PREFIX}step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in trainable.items()},
                  str(tmp / "trainable.safetensors"))
        if anchor is not None:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in anchor.items()},
                      str(tmp / "anchor.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=1))
        for child in tmp.iterdir():
            _fsync_file(child)
        _fsync_dir(tmp)
    except BaseException:
        # A full disk mid-write: the half-written temp dir would hold the space the next try needs (its name has
        # this pid, so the next trainer would not reuse it). The complete checkpoints stay.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # the same step again (a resumed run re-reaching a step): the new one replaces it
        aside = root / f"{TMP_PREFIX}old-step-{step}-{os.getpid()}"
        os.replace(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    for _, old in complete(root)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path) -> dict[str, Any]:
    """{"meta", "trainable", "anchor" (or None), "state"} of a complete checkpoint; raises if any part is bad."""
    from safetensors.torch import load_file

    meta = json.loads((path / "meta.json").read_text())
    trainable = load_file(str(path / "trainable.safetensors"))
    anchor_path = path / "anchor.safetensors"
    anchor = load_file(str(anchor_path)) if anchor_path.exists() else None
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return {"meta": meta, "trainable": trainable, "anchor": anchor, "state": state}


def remove_all(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(root)


def same_job(meta: dict[str, Any], run_id: str, method: str, keys: Any, effective_batch: int) -> bool:
    """A checkpoint resumes only the job that wrote it: same run, method, trainable tensors, effective batch."""
    return (meta.get("run_id") == run_id and meta.get("method") == method
            and sorted(meta.get("keys", [])) == sorted(keys) and meta.get("effective_batch") == effective_batch)


def newest_of_job(root: Path, run_id: str, method: str, keys: Any,
                  effective_batch: int) -> tuple[int, Path, dict[str, Any]] | None:
    """The newest readable checkpoint under `root` (step, path, its load()), None if there is none. A damaged one
    is passed over for the one before; one of another job raises, since resuming it would train the wrong run."""
    from memwarden.training.preflight import GiveUp

    for step, path in complete(root):
        try:
            ck = load(path)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint: fall back to the one before
            print(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); trying an older one",
                  file=sys.stderr)
            continue
        if not same_job(ck["meta"], run_id, method, keys, effective_batch):
            raise GiveUp(f"checkpoint {path} was written by a different job (run_id, method, trainable tensors "
                         f"or effective batch differ); remove {root} to start this job over")
        return step, path, ck
    return None
