"""What `make deb` puts in the package, checked without installing it: layout, metadata and lintian."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# The package is built (session fixture `deb`) outside this budget: the tests time their own bodies only.
pytestmark = pytest.mark.timeout(300, func_only=True)


def contents(deb: Path) -> dict[str, str]:
    """path → the listing line's mode string (with ' -> target' for links)."""
    out = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    listing = {}
    for line in out.splitlines():
        fields = line.split(None, 5)
        name = fields[5]
        target = ""
        if " -> " in name:
            name, target = name.split(" -> ", 1)
        listing[name.removeprefix(".").rstrip("/") or "/"] = f"{fields[0]} {target}".strip()
    return listing


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_layout(deb: Path) -> None:
    files = contents(deb)
    assert files["/usr/bin/memwardend"] == "lrwxrwxrwx /opt/memwarden/bin/memwardend"
    assert files["/usr/bin/memwardenctl"] == "lrwxrwxrwx /opt/memwarden/bin/memwardenctl"
    for path in ("/lib/systemd/system/memwarden.service", "/lib/systemd/system/memwarden.socket",
                 "/lib/systemd/system/memwarden-train@.service",
                 "/usr/share/polkit-1/rules.d/50-memwarden-train.rules",
                 "/etc/memwarden/memwarden.toml", "/usr/lib/sysusers.d/memwarden.conf",
                 "/usr/share/doc/memwarden/copyright", "/usr/share/doc/memwarden/changelog.Debian.gz",
                 "/usr/share/doc/memwarden/changelog.gz",
                 "/usr/share/memwarden/grafana/memwarden.json", "/usr/share/man/man8/memwardend.8.gz",
                 "/usr/share/man/man1/memwardenctl.1.gz", "/opt/memwarden/pyvenv.cfg",
                 "/usr/share/bash-completion/completions/memwardenctl",
                 "/usr/share/zsh/vendor-completions/_memwardenctl"):
        assert path in files, f"{path} missing from the package"
    # Byte-code is made at install (postinst), never shipped.
    assert not [p for p in files if "__pycache__" in p]
    # The venv's interpreter is Debian's, which the package depends on.
    assert files["/opt/memwarden/bin/python3"].endswith("/usr/bin/python3")


def test_metadata(deb: Path) -> None:
    depends = field(deb, "Depends")
    assert "python3.11" in depends and "systemd" in depends
    assert field(deb, "Package") == "memwarden"
    conffiles = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert conffiles == ["/etc/memwarden/memwarden.toml"]


def test_the_venv_names_only_its_installed_prefix(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True)
    venv = tmp_path / "opt/memwarden"
    shebang = (venv / "bin/memwardend").read_text().splitlines()[0]
    assert shebang == "#!/opt/memwarden/bin/python"
    assert "/opt/memwarden" in (venv / "bin/activate").read_text()
    # No build-time path anywhere in the venv's text files.
    hits = subprocess.run(["grep", "-rlI", "/tmp/", str(venv / "bin"), str(venv / "pyvenv.cfg")],
                          capture_output=True, text=True).stdout
    assert hits == ""


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed (.ci/run installs it)")
def test_lintian_reports_nothing_beyond_the_reviewed_overrides(deb: Path) -> None:
    done = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb)], capture_output=True, text=True,
                          timeout=300)
    tags = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert tags == [], "\n".join(tags)
