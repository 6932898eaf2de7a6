from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.daemon import DaemonProcess


@pytest.fixture
def make_daemon() -> Iterator:
    made: list[DaemonProcess] = []

    def factory(**kwargs) -> DaemonProcess:
        d = DaemonProcess(**kwargs)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(make_daemon) -> DaemonProcess:
    return make_daemon().start()
