"""`memwardenctl setup training`: the torch build chosen from the machine's NVIDIA probes, the pip command lines
for each build, and what is refused before pip runs. pip itself is replaced by a recorder here."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest

from memwarden.cli import memwardenctl, setup_training
from memwarden.cli.setup_training import CPU_INDEX, Machine, Venv, choose_build, plan, probe_machine

REPO = Path(__file__).resolve().parents[3]
PY = "/opt/memwarden/bin/python"
PIP = [PY, "-m", "pip", "install", "--disable-pip-version-check"]
REQS = ["torch>=2.3", "transformers>=4.44", "peft>=0.12"]
NO_GPU = Machine(nvidia_smi=None, driver=None)


def no_which(_name: str) -> str | None:
    return None


@pytest.mark.parametrize(("smi", "driver_text", "build"), [
    ("/usr/bin/nvidia-smi", None, "cuda"),
    (None, "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14\n", "cuda"),
    ("/usr/bin/nvidia-smi", "NVRM version: 550.54.14\n", "cuda"),
    (None, None, "cpu"),
    (None, "", "cpu"),  # an empty file names no driver
])
def test_the_build_follows_the_nvidia_probes(tmp_path, smi, driver_text, build):
    driver_file = tmp_path / "version"
    if driver_text is not None:
        driver_file.write_text(driver_text)
    machine = probe_machine(which=lambda name: smi if name == "nvidia-smi" else None, driver_file=driver_file)
    assert machine.nvidia_smi == smi
    choice = choose_build(machine)
    assert choice.build == build
    if build == "cpu":
        assert "no nvidia-smi on PATH" in choice.reason
    elif smi is None:
        assert "550.54.14" in choice.reason


@pytest.mark.parametrize("forced", ["cpu", "cuda"])
def test_cpu_or_cuda_given_overrides_the_probes(forced):
    for machine in (NO_GPU, Machine("/usr/bin/nvidia-smi", "NVRM version: 550")):
        assert choose_build(machine, forced) == setup_training.Choice(forced, f"--{forced} given")


def test_the_cpu_build_comes_from_pytorchs_cpu_index_before_the_rest():
    assert plan(PY, REQS, "cpu") == [[*PIP, "--index-url", CPU_INDEX, "torch>=2.3"], [*PIP, *REQS]]


def test_the_cuda_build_is_one_install_from_the_default_index():
    assert plan(PY, REQS, "cuda") == [[*PIP, *REQS]]


def test_only_torch_itself_goes_to_the_cpu_index():
    first = plan(PY, ["torchvision>=0.18", "torch-foo", "torch~=2.4", "peft"], "cpu")[0]
    assert first == [*PIP, "--index-url", CPU_INDEX, "torch~=2.4"]


def test_the_requirements_are_pyprojects_train_extra():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    assert sorted(setup_training.train_requirements()) == sorted(extra)


def args(*argv: str):
    return memwardenctl.parse_args(["setup", "training", *argv])


def venv(unwritable: tuple[Path, ...] = (), is_venv: bool = True) -> Venv:
    return Venv(python=PY, prefix=Path("/opt/memwarden"), is_venv=is_venv, unwritable=unwritable)


class Recorder:
    def __init__(self, codes: list[int] | None = None):
        self.calls: list[list[str]] = []
        self.codes = codes or []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        return self.codes.pop(0) if self.codes else 0


def test_a_run_prints_each_command_then_runs_it_and_checks_the_imports(capsys):
    pip = Recorder()
    assert setup_training.run(args(), venv(), NO_GPU, pip) == 0
    reqs = setup_training.train_requirements()
    assert pip.calls[:2] == plan(PY, reqs, "cpu")
    assert pip.calls[2][:2] == [PY, "-c"]
    assert 'import_module(m) for m in ("peft", "torch", "transformers")' in pip.calls[2][2]
    assert len(pip.calls) == 3
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("torch build: cpu (no NVIDIA driver")
    assert [line for line in out if line.startswith("$ ")] == [f"$ {shlex.join(a)}" for a in pip.calls[:2]]
    assert any("need not restart" in line for line in out)


def test_a_dry_run_prints_the_commands_and_runs_nothing(capsys):
    pip = Recorder()
    assert setup_training.run(args("--dry-run", "--cuda"), venv(), NO_GPU, pip) == 0
    assert pip.calls == []
    out = capsys.readouterr().out
    assert "torch build: cuda (--cuda given)" in out
    assert out.count("\n$ ") == 1 and "--index-url" not in out


def test_pips_failure_is_the_exit_status_and_stops_there(capsys):
    pip = Recorder(codes=[7])
    assert setup_training.run(args("--cpu"), venv(), NO_GPU, pip) == 7
    assert len(pip.calls) == 1
    assert capsys.readouterr().err == "memwardenctl: pip exited 7; nothing after it ran\n"


def test_an_install_that_cannot_be_imported_fails(capsys):
    assert setup_training.run(args("--cuda"), venv(), NO_GPU, Recorder(codes=[0, 1])) == 1
    assert "cannot import torch, transformers and peft" in capsys.readouterr().err


def test_an_unwritable_venv_is_refused_before_pip_in_one_line(capsys):
    pip = Recorder()
    site = Path("/opt/memwarden/lib/python3.11/site-packages")
    assert setup_training.run(args(), venv(unwritable=(site,)), NO_GPU, pip) == 1
    assert pip.calls == []
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"memwardenctl: {site} is not writable by this user: run it as root "
                            "(sudo memwardenctl setup training)\n")


def test_a_dry_run_of_an_unwritable_venv_says_that_the_install_needs_root(capsys):
    site = Path("/opt/memwarden/lib/python3.11/site-packages")
    assert setup_training.run(args("--dry-run"), venv(unwritable=(site,)), NO_GPU, Recorder()) == 0
    assert f"{site} is not writable by this user, so the install needs root" in capsys.readouterr().out


def test_an_interpreter_outside_a_venv_is_refused(capsys):
    pip = Recorder()
    assert setup_training.run(args(), venv(is_venv=False), NO_GPU, pip) == 1
    assert pip.calls == []
    assert "which is not a venv" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["setup"], ["setup", "training", "--cpu", "--cuda"], ["setup", "everything"]])
def test_usage_errors_exit_2_in_one_line(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        memwardenctl.parse_args(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_setup_is_answered_locally():
    assert memwardenctl.local(args("--dry-run"))
    assert args("--cpu").build == "cpu" and args().build is None and args("--dry-run").dry_run
