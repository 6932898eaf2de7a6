"""The completion scripts are generated from the parser: every command and verb it has is in both, and the
shells accept them."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess

import pytest

from memwarden.cli import completion, memwardenctl


def parser() -> argparse.ArgumentParser:
    return memwardenctl.parse_args(["status"]).parser


def commands_and_verbs() -> dict[str, list[str]]:
    """Read from argparse directly, not through completion.tree(), so a verb tree() misses is caught."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    out: dict[str, list[str]] = {}
    for name, p in sub.choices.items():
        verbs: list[str] = []
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                verbs += list(a.choices)
            elif a.choices and not a.option_strings:
                verbs += [str(c) for c in a.choices]
        out[name] = verbs
    out["lease"] = list(memwardenctl.LEASE_VERBS)
    return out


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_script_names_every_command_and_verb_of_the_parser(shell):
    text = completion.script(parser(), shell, memwardenctl.LEASE_VERBS)
    expected = commands_and_verbs()
    assert {"config", "diagnostics", "version", "completion", "train", "memories", "setup"} <= set(expected)
    assert "watch" in expected["train"] and {"show", "check"} <= set(expected["config"])
    assert expected["setup"] == ["training"]
    for name, verbs in expected.items():
        case = re.search(rf"^        {re.escape(name)}\)\n(.*?)(?=^        \S|^    esac)", text, re.M | re.S)
        assert case, f"{shell}: no case for {name}"
        assert [v for v in verbs if v not in case.group(1)] == [], f"{shell}: verbs of {name} missing"
    for option in ("--socket", "--json", "--timeout", "--limit", "--import-id", "--preemptible", "--secrets",
                   "--cpu", "--cuda", "--dry-run"):
        assert option in text


def test_bash_accepts_the_script_and_completes_commands_and_verbs(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    script = tmp_path / "memwardenctl.bash"
    script.write_text(completion.script(parser(), "bash", memwardenctl.LEASE_VERBS))
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0

    def complete(*words: str) -> list[str]:
        line = " ".join(("memwardenctl", *words))
        probe = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; _memwardenctl; "
                 'printf "%s\\n" "${COMPREPLY[@]}"')
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert "containers" in complete("con") and "config" in complete("con")
    assert complete("--socket", "/tmp/x", "train", "wa") == ["watch"]
    assert complete("memories", "list", "--li") == ["--limit"]
    assert set(complete("lease", "")) >= {"list", "release", "preempt", "--gpu", "--wait"}
    assert complete("completion", "") == ["bash", "zsh", "--help"]
    assert complete("setup", "") == ["training", "--help"]
    assert complete("setup", "training", "--") == ["--help", "--cpu", "--cuda", "--dry-run"]


def test_zsh_accepts_the_script(tmp_path):
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed on this machine: its syntax check cannot run here")
    script = tmp_path / "_memwardenctl"
    script.write_text(completion.script(parser(), "zsh", memwardenctl.LEASE_VERBS))
    done = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
