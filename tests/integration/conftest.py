from __future__ import annotations

import pytest

from support.daemon import DaemonProcess


@pytest.fixture
def daemon(make_daemon) -> DaemonProcess:
    return make_daemon().start()
