"""The e2e machine: `make deb`'s package installed into a Debian 12 container booted with real systemd."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from support.nspawn import SETUP_TIMEOUT, Machine, base_rootfs, build_deb, missing_means

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = missing_means()
    if why:
        pytest.skip(why)
    return build_deb(REPO, tmp_path_factory.mktemp("deb"))


@contextlib.contextmanager
def installed(deb: Path, binds: Sequence[tuple[Path, str]] = ()) -> Iterator[Machine]:
    """A freshly booted machine with the package installed the way an admin does it: dpkg -i with systemd
    running, so postinst enables and starts the units. `binds` are more host directories, read-only."""
    with Machine(base_rootfs(), binds=[(deb.parent, "/mnt/deb"), *binds]) as m:
        m.run("dpkg", "-i", f"/mnt/deb/{deb.name}", timeout=SETUP_TIMEOUT)
        yield m


@pytest.fixture(scope="module")
def machine(deb: Path) -> Iterator[Machine]:
    with installed(deb) as m:
        yield m
