"""`memwardenctl setup training` run for real: the pip command lines it prints for this venv, a real run that
finds everything installed (PIP_NO_INDEX: nothing can be downloaded) and imports the heavy modules in the venv's
interpreter, and the refusal of a venv the user may not write, run as `nobody` from a root-owned venv."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from memwarden.cli.setup_training import CPU_INDEX
from support.daemon import BIN

REPO = Path(__file__).resolve().parents[2]
TRAIN = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
NO_DOWNLOADS = {**os.environ, "PIP_NO_INDEX": "1"}  # overrides --index-url too: pip may only look at what is here


def expected_commands(python: str, build: str) -> list[str]:
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    torch = [r for r in TRAIN if re.match(r"torch\W", r)]
    lines = [[*pip, "--index-url", CPU_INDEX, *torch]] if build == "cpu" else []
    return [f"$ {shlex.join(argv)}" for argv in [*lines, [*pip, *TRAIN]]]


def setup(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "memwardenctl", "setup", "training", *argv], capture_output=True, text=True,
                          env=env or NO_DOWNLOADS, timeout=600)


def this_machine_has_nvidia() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


@pytest.mark.parametrize("flag", ["--cpu", "--cuda", None])
def test_a_dry_run_prints_the_pip_commands_for_this_venv_and_runs_none(flag):
    done = setup("--dry-run", *([flag] if flag else []))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    build = flag[2:] if flag else ("cuda" if this_machine_has_nvidia() else "cpu")
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"torch build: {build} (")
    assert lines[1] == f"venv: {sys.prefix}"
    assert [line for line in lines if line.startswith("$ ")] == expected_commands(str(BIN / "python"), build)
    assert "Requirement" not in done.stdout  # pip did not run


@pytest.mark.timeout(600)
def test_a_real_run_into_a_venv_that_has_the_extra_installs_nothing_and_checks_the_imports():
    done = setup("--cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Requirement already satisfied: torch>=2.3") == 2  # once per pip command
    assert re.search(r"^torch \S+ \((CPU|CUDA \S+) build; GPU usable: (yes|no)\)$", done.stdout, re.M)
    assert re.search(r"^transformers \d\S*$", done.stdout, re.M) and re.search(r"^peft \d\S*$", done.stdout, re.M)
    assert "memwarden need not restart" in done.stdout


def test_a_failing_pip_is_the_exit_status(tmp_path):
    # A constraint no installed torch meets, and no index: pip itself refuses, and its status is memwardenctl's.
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch==0.0.1\n")
    done = setup("--cpu", env={**NO_DOWNLOADS, "PIP_CONSTRAINT": str(constraints)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.endswith("memwardenctl: pip exited 1; nothing after it ran\n")
    # The first command ran and failed; the second was never printed, so never run.
    assert [line for line in done.stdout.splitlines() if line.startswith("$ ")] == expected_commands(
        str(BIN / "python"), "cpu")[:1]


@pytest.fixture
def root_owned_venv() -> Iterator[Path]:
    """A venv nobody may write, that `nobody` can run: Debian's python3 of this minor version, with memwarden
    and its dependencies from this checkout and this venv (a .pth, as an editable install has)."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("running as another user needs root and runuser")
    python = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin:/usr/local/bin")
    if python is None or subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", ""], cwd="/").returncode:
        pytest.skip(f"no python{sys.version_info[0]}.{sys.version_info[1]} that the user nobody may run")
    top = Path(tempfile.mkdtemp(prefix="memwarden-setup-"))
    try:
        top.chmod(0o755)
        venv = top / "venv"
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        site = Path(subprocess.run([venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path("
                                    "'purelib'))"], capture_output=True, text=True, check=True).stdout.strip())
        ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
        (site / "memwarden-checkout.pth").write_text("\n".join([str(REPO / "daemon"), *sorted(ours)]) + "\n")
        yield venv
    finally:
        shutil.rmtree(top)


def as_nobody(venv: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", str(venv / "bin/python"), "-m",
                           "memwarden.cli.memwardenctl", "setup", "training", *argv], capture_output=True, text=True,
                          cwd="/", env=NO_DOWNLOADS, timeout=120)


def test_a_venv_the_user_may_not_write_is_refused_in_one_line_before_pip(root_owned_venv):
    done = as_nobody(root_owned_venv)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr == (f"memwardenctl: {root_owned_venv}/bin is not writable by this user: run it as root "
                           "(sudo memwardenctl setup training)\n")


def test_a_dry_run_there_shows_the_commands_for_that_venv_and_says_the_install_needs_root(root_owned_venv):
    done = as_nobody(root_owned_venv, "--dry-run", "--cuda")
    assert done.returncode == 0, done.stderr
    assert f"venv: {root_owned_venv}\n" in done.stdout
    assert f"{root_owned_venv}/bin is not writable by this user, so the install needs root" in done.stdout
    commands = [line for line in done.stdout.splitlines() if line.startswith("$ ")]
    assert commands == expected_commands(str(root_owned_venv / "bin/python"), "cuda")
