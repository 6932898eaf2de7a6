"""`python -m memwarden.training JOB.json`: train as the JobSpec says, progress as JSON lines on stdout.

Exit status: 0 done, 75 preempted (checkpoint written; run again with the same spec to resume), 1 failed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from memwarden.learning.gpu_wait import cpu_threads
from memwarden.malloc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt

# Offline, always: the base model is a local directory and nothing may be fetched. Set before transformers loads.
_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

USAGE = "usage: python -m memwarden.training JOB.json"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    os.environ.update(_ENV)

    from memwarden.learning.jobspec import EXIT_FAILED, JobSpec
    from memwarden.training.events import Emitter
    from memwarden.training.stop import StopFlag

    emit = Emitter.claim_stdout()
    stop = StopFlag().install()  # before the heavy imports: a SIGTERM while torch loads is still a preemption
    try:
        spec = JobSpec.read(args[0])
    except Exception as exc:  # noqa: BLE001 - any unreadable spec is one clear error line
        emit.emit("error", message=f"cannot read job spec {args[0]}: {type(exc).__name__}: {exc}")
        return EXIT_FAILED

    from memwarden.learning.jobspec import EXIT_DONE
    from memwarden.training.preflight import GiveUp, already_done, validate

    try:
        validate(spec)
        done = already_done(spec)
    except GiveUp as exc:
        emit.emit("error", message=str(exc))
        return EXIT_FAILED
    if done is not None:
        emit.emit("done", **done, already_done=True)
        return EXIT_DONE
    if spec.sim_gpu is not None:
        from memwarden.gpu import simfile

        try:  # what this process would hold on a real GPU, for the sim backend's probe to see
            simfile.book(Path(spec.sim_gpu.file), spec.sim_gpu.gpu, os.getpid(), spec.sim_gpu.used_bytes)
        except Exception as exc:  # noqa: BLE001 - a sim file that cannot be booked fails the run saying so
            emit.emit("error", message=f"cannot book the sim GPU: {type(exc).__name__}: {exc}")
            return EXIT_FAILED

    if spec.nice:
        os.nice(spec.nice)
    keep_freed_memory()
    leave_out_bitsandbytes(spec.method, sys.modules)
    from memwarden.training.trainer import Trainer  # torch from here on

    threads = torch_threads(spec.cpu_threads, spec.device, os.environ)
    if threads:
        import torch

        torch.set_num_threads(threads)

    return Trainer(spec, emit, stop).run()


def torch_threads(given: int | None, device: str, environ: Mapping[str, str], cpus: int | None = None) -> int | None:
    """The threads torch computes with: the job spec's; else, on the CPU, every core but one, left to serving and
    the daemon (the CPU fallback's rule, gpu_wait.cpu_threads), since torch's default of one thread per core
    spins against them and a busy host then trains many times slower (BENCHMARKS.md, "Torch threads on a busy
    host"); an OMP_NUM_THREADS set for the process is the operator's word and is kept. None: torch's default."""
    if given:
        return given
    if device != "cpu" or environ.get("OMP_NUM_THREADS"):
        return None
    return cpu_threads(cpus)


def leave_out_bitsandbytes(method: str, modules: dict[str, Any]) -> None:
    """A job that quantizes nothing (every method but qlora) runs without bitsandbytes: peft imports it whenever
    it is installed, and with it torch's inductor and a look-up of a kernel hub, 1.8 s of CPU in each trainer
    process, two a run (BENCHMARKS.md, Recall 5j). None in sys.modules makes `import bitsandbytes` fail and
    find_spec answer None, as if it were not installed, which peft and transformers allow for."""
    if method != "qlora":
        modules.setdefault("bitsandbytes", None)


MMAP_THRESHOLD = 64 * 2**20
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory(libc: Any = None) -> bool:
    """Let glibc keep the memory a training step frees for the next step. Torch's CPU tensors come from malloc,
    and every step allocates and frees the same activations and gradients; by default glibc gives each block
    above its threshold back to the kernel when freed and faults it in again at the next step (0.8–1.4 million
    page faults and 1.5–2.6 s of system time in a round of 620 steps, BENCHMARKS.md, Recall 5l). Blocks under
    64 MiB now come from the heap, which keeps up to 256 MiB free at its top: the process's peak is the same,
    it holds on to it between steps. False where the C library has no mallopt (not glibc)."""
    return mallopt({M_MMAP_THRESHOLD: MMAP_THRESHOLD, M_TRIM_THRESHOLD: TRIM_THRESHOLD}, libc)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: with torch, transformers and peft loaded it takes 1–2 s, and a
    preempted run's lease is released only when this process is gone. Everything that matters (checkpoint,
    final files, progress lines) is written and flushed by then."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
