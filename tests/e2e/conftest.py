"""The e2e machine: `make deb`'s package installed into a Debian 12 container booted with real systemd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.nspawn import Machine, build_deb, installed, missing_means

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = missing_means()
    if why:
        pytest.skip(why)
    return build_deb(REPO, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def machine(deb: Path) -> Iterator[Machine]:
    with installed(deb) as m:
        yield m
