"""`memwardenctl setup training`: the `train` extra installed into the venv memwarden runs from, with the torch
build the machine can use, so a packaged install (/opt/memwarden) can learn without anyone running pip by hand.

Sense → decide → act, locally and without the daemon: probe_machine() reads whether an NVIDIA driver is present,
choose_build() picks the CUDA or CPU build from that (or from --cpu / --cuda), plan() turns the choice into pip
command lines, and run() prints each one and runs it (or only prints it, with --dry-run).

The requirements come from memwarden's own installed metadata (pyproject.toml's `train` extra), not from
`pip install 'memwarden[train]'`: memwarden is installed from a checkout or a .deb, not from an index, so pip
could not resolve `memwarden` itself there."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from memwarden.cli.usage import fail

EXTRA = "train"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's index of CPU-only wheels (no CUDA libraries)
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # present while the NVIDIA kernel module is loaded
_EXTRA_MARKER = re.compile(r"""^\s*extra\s*==\s*["']([^"']+)["']\s*$""")

Build = Literal["cuda", "cpu"]
# Run in the venv's interpreter after the install: the CLI itself never imports the heavy modules.
CHECK_SCRIPT = """\
import importlib
peft, torch, transformers = (importlib.import_module(m) for m in ("peft", "torch", "transformers"))
cuda = torch.version.cuda
print(f"torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU'} build; "
      f"GPU usable: {'yes' if torch.cuda.is_available() else 'no'})")
print(f"transformers {transformers.__version__}")
print(f"peft {peft.__version__}")
"""


def add_parser(sub: Any) -> None:
    setup = sub.add_parser("setup", help="setup training: install the train extra into memwarden's venv",
                           description="local installs into the venv memwarden runs from (no daemon needed)")
    verbs = setup.add_subparsers(dest="verb", required=True, metavar="VERB")
    training = verbs.add_parser(
        "training", help="install torch (CUDA or CPU build), transformers, peft & co into memwarden's venv (root)",
        description="Install the train extra into the venv memwarden runs from, with the CUDA build of torch "
        "when an NVIDIA driver is present and the CPU build otherwise. Each pip command is printed before it "
        "runs; the exit status is pip's.")
    build = training.add_mutually_exclusive_group()
    build.add_argument("--cpu", dest="build", action="store_const", const="cpu",
                       help=f"the CPU build of torch, from {CPU_INDEX}")
    build.add_argument("--cuda", dest="build", action="store_const", const="cuda",
                       help="the CUDA build of torch, from PyPI")
    training.add_argument("--dry-run", action="store_true", help="print the pip command lines, run nothing")


# ---- sense ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Machine:
    """What decides the torch build: where nvidia-smi is, and the loaded NVIDIA driver's version line."""

    nvidia_smi: str | None
    driver: str | None


def probe_machine(which: Callable[[str], str | None] = shutil.which,
                  driver_file: Path = NVIDIA_DRIVER_FILE) -> Machine:
    try:
        driver = driver_file.read_text().splitlines()[0].strip() or None
    except (OSError, IndexError):
        driver = None
    return Machine(nvidia_smi=which("nvidia-smi"), driver=driver)


@dataclass(frozen=True)
class Venv:
    """The interpreter memwarden runs with, and whether its venv can be installed into."""

    python: str
    prefix: Path
    is_venv: bool
    unwritable: tuple[Path, ...]  # the install directories this user may not write


def probe_venv() -> Venv:
    dirs = {Path(sysconfig.get_path(name)) for name in ("purelib", "platlib", "scripts")}
    return Venv(python=sys.executable, prefix=Path(sys.prefix), is_venv=sys.prefix != sys.base_prefix,
                unwritable=tuple(sorted(d for d in dirs if not os.access(d, os.W_OK))))


def train_requirements(dist: str = "memwarden") -> list[str]:
    """The `train` extra's requirements as pyproject.toml states them (`torch>=2.3`, …), markers dropped."""
    out = []
    for line in metadata.requires(dist) or []:
        spec, _, marker = line.partition(";")
        found = _EXTRA_MARKER.match(marker)
        if found and found.group(1) == EXTRA:
            out.append(spec.strip())
    return out


# ---- decide --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    build: Build
    reason: str


def choose_build(machine: Machine, forced: Build | None = None) -> Choice:
    if forced is not None:
        return Choice(forced, f"--{forced} given")
    if machine.nvidia_smi:
        return Choice("cuda", f"NVIDIA driver present: {machine.nvidia_smi}")
    if machine.driver:
        return Choice("cuda", f"NVIDIA driver present: {machine.driver}")
    return Choice("cpu", f"no NVIDIA driver: no nvidia-smi on PATH, no {NVIDIA_DRIVER_FILE}")


def plan(python: str, requirements: Sequence[str], build: Build) -> list[list[str]]:
    """The pip command lines. The CPU build comes first from PyTorch's CPU index; the rest then finds torch
    already satisfied, so no dependency pulls the CUDA build (and its gigabytes of libraries) in after it."""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    torch = [r for r in requirements if re.match(r"torch\b(?![-_.\w])", r)]
    if build == "cpu":
        return [[*pip, "--index-url", CPU_INDEX, *(torch or ["torch"])], [*pip, *requirements]]
    return [[*pip, *requirements]]


# ---- act -----------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, venv: Venv | None = None, machine: Machine | None = None,
        runner: Callable[[list[str]], int] | None = None) -> int:
    """Exit 0 when installed and importable (or printed, with dry_run); else pip's status, or 1."""
    runner = runner or _run
    venv = venv or probe_venv()
    if not venv.is_venv:
        return fail(f"memwardenctl runs from {venv.python}, which is not a venv: install the train extra "
                    "with that Python's own tools")
    if venv.unwritable and not args.dry_run:
        return fail(f"{venv.unwritable[0]} is not writable by this user: run it as root "
                    "(sudo memwardenctl setup training)")
    try:
        requirements = train_requirements()
    except metadata.PackageNotFoundError:
        return fail(f"memwarden is not installed as a package in {venv.prefix}: no train extra to read")
    if not requirements:
        return fail(f"memwarden's metadata in {venv.prefix} names no {EXTRA!r} extra")
    choice = choose_build(machine or probe_machine(), args.build)
    print(f"torch build: {choice.build} ({choice.reason})")
    print(f"venv: {venv.prefix}", flush=True)
    if venv.unwritable:
        print(f"(a dry run: {venv.unwritable[0]} is not writable by this user, so the install needs root)")
    for argv in plan(venv.python, requirements, choice.build):
        print(f"$ {shlex.join(argv)}", flush=True)
        if not args.dry_run and (code := runner(argv)) != 0:
            return fail(f"pip exited {code}; nothing after it ran", code)
    if args.dry_run:
        return 0
    print(f"checking with {venv.python}: import torch, transformers, peft", flush=True)
    if (code := runner([venv.python, "-c", CHECK_SCRIPT])) != 0:
        return fail(f"pip succeeded but {venv.python} cannot import torch, transformers and peft (exit {code})",
                    code)
    print(f"the train extra is installed in {venv.prefix}.\n"
          "memwarden need not restart: each training run starts a new trainer with this interpreter.\n"
          "next: set learning.enabled and learning.base_model (memwardenctl model init-demo DIR builds a tiny "
          "one), then systemctl reload memwarden")
    return 0


def _run(argv: list[str]) -> int:
    """Run with this terminal, so pip's output streams as it comes; a signal's death as a shell reports it."""
    code = subprocess.run(argv).returncode
    return 128 - code if code < 0 else code
