"""The files shipped beside the code stay true to it: the default config, the docs and the units."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from memwarden.config.schema import SECTIONS, section_fields
from memwarden.config.template import render_template
from support.daemon import BIN

ROOT = Path(__file__).resolve().parents[2]


def test_etc_config_is_the_rendered_schema():
    assert (ROOT / "etc" / "memwarden.toml").read_text() == render_template(), \
        "regenerate with: memwardend --print-default-config > etc/memwarden.toml"


def test_etc_config_with_every_key_uncommented_is_valid(tmp_path):
    text = re.sub(r"^#(\w+ = )", r"\1", render_template(), flags=re.M)
    (tmp_path / "all.toml").write_text(text)
    run = subprocess.run([BIN / "memwardend", "--check-config", "--config", tmp_path / "all.toml"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_docs_document_every_key_and_command():
    readme = (ROOT / "docs" / "configuration.md").read_text() + (ROOT / "docs" / "commands.md").read_text()
    missing = [f"{name}.{f.name}" for name, section in SECTIONS.items() for f in section_fields(section)
               if f"`{name}.{f.name}`" not in readme]
    assert missing == []
    from memwarden.cli.memwardenctl import COMMANDS

    assert [c for c in COMMANDS if f"memwardenctl {c}" not in readme] == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart exists; point it at this venv's memwardend.
    service = (ROOT / "systemd" / "memwarden.service").read_text()
    assert "ExecStart=/usr/bin/memwardend\n" in service
    (tmp_path / "memwarden.service").write_text(service.replace("/usr/bin/memwardend", str(BIN / "memwardend")))
    shutil.copy(ROOT / "systemd" / "memwarden.socket", tmp_path)
    run = subprocess.run(["systemd-analyze", "verify", tmp_path / "memwarden.service",
                          tmp_path / "memwarden.socket"], capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values; only silence means the units are clean.
    assert run.returncode == 0 and run.stderr == "" and run.stdout == "", run.stderr + run.stdout


def unit_settings(name: str) -> list[str]:
    return [line for line in (ROOT / "systemd" / name).read_text().splitlines() if line and line[0] not in "#["]


def test_only_the_trainer_unit_allows_wx_memory_and_stops_alone_on_oom():
    daemon, trainer = unit_settings("memwarden.service"), unit_settings("memwarden-train@.service")
    assert "MemoryDenyWriteExecute=yes" in daemon and "MemoryDenyWriteExecute=no" in trainer
    assert not [s for s in daemon if s.startswith("OOMPolicy=")]
    for setting in ("OOMPolicy=stop", "Nice=10", "IPAddressDeny=any", "IPAddressAllow=localhost",
                    "SyslogIdentifier=memwarden-train-%i", "LogExtraFields=MEMWARDEN_RUN=%i",
                    "ExecStart=/opt/memwarden/bin/python -m memwarden.learning.unit_entry %i"):
        assert setting in trainer
    assert not [s for s in trainer if s.split("=")[0] in ("BindsTo", "PartOf")], "it must outlive the daemon"


def test_the_polkit_rule_names_only_trainer_units():
    rule = (ROOT / "packaging" / "deb" / "memwarden-train.rules").read_text()
    assert '/^memwarden-train@[A-Za-z0-9_-]+\\.service$/' in rule and 'subject.user == "memwarden"' in rule


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_trainer_template_passes_systemd_analyze_verify(tmp_path):
    template = (ROOT / "systemd" / "memwarden-train@.service").read_text()
    (tmp_path / "memwarden-train@.service").write_text(
        template.replace("/opt/memwarden/bin/python", str(BIN / "python")))
    run = subprocess.run(["systemd-analyze", "verify", tmp_path / "memwarden-train@r1.service"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and run.stderr == "" and run.stdout == "", run.stderr + run.stdout
