from __future__ import annotations

import pytest

from support import learning_daemon
from support.daemon import DaemonProcess


@pytest.fixture
def daemon(make_daemon) -> DaemonProcess:
    return make_daemon().start()


@pytest.fixture
def learning(make_daemon, demo_base):
    """start(extra, with_double, models): a daemon with learning on (support/learning_daemon.py) and its Ollama
    double, both stopped after the test."""
    started = []
    yield lambda extra=None, with_double=True, models=(): learning_daemon.start(make_daemon, demo_base, started, extra,
                                                                                with_double, models)
    for double in started:
        double.cleanup()
