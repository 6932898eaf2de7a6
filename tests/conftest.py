"""Fixtures shared by the suites that run the real memwardend (integration, faults)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import DaemonProcess
from support.demo_base import demo_base as cached_demo_base

# The build runs before the first test (pytest_collection_finish), outside any test's time-out: on a busy machine
# the pre-training takes minutes; kept between sessions (tests/support/demo_base.py), it is built once per change.
DEMO_TIMEOUT = 1800
# Enough pre-training for the demo base to speak its corpus's forms (a small round reaches its recall target in
# a few dozen steps), in a fraction of `model init-demo`'s default time.
TEST_PRETRAIN_STEPS = 150


def pytest_collection_finish(session: pytest.Session) -> None:
    if not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "tokenizers")):
        return  # the tests that need the base skip themselves without the train extra
    if any("demo_base" in getattr(item, "fixturenames", ()) for item in session.items):
        with contextlib.suppress(Exception):  # a failed build fails the tests that need it, in the fixture
            cached_demo_base(TEST_PRETRAIN_STEPS, DEMO_TIMEOUT)


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


@pytest.fixture(scope="session")
def demo_base() -> Path:
    """The tiny offline Llama base model (`memwardenctl model init-demo`), built once and only read; needs the
    train extra."""
    out = cached_demo_base(TEST_PRETRAIN_STEPS, DEMO_TIMEOUT)
    assert (out / "config.json").exists() and (out / "general_probe.jsonl").exists()
    return out
