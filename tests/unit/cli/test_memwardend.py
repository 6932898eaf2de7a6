"""memwardend's start: glibc held to one malloc arena before the daemon, and with it any thread, starts."""

from __future__ import annotations

import pytest
import structlog

import memwarden.daemon
from memwarden.cli import memwardend
from memwarden.malloc import M_ARENA_MAX


@pytest.fixture(autouse=True)
def logging_kept():
    """memwardend configures structlog for the process, bound to this test's stderr: put back what was there."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_one_arena_is_set_before_the_daemon_runs(tmp_path, monkeypatch):
    seen: list[tuple[str, object]] = []

    class Daemon:
        def __init__(self, config, config_arg=None):
            self.config = config

        async def run(self) -> int:
            seen.append(("daemon", None))
            return 7

    monkeypatch.setattr(memwarden.daemon, "Daemon", Daemon)
    monkeypatch.setattr(memwardend, "mallopt", lambda settings: seen.append(("mallopt", dict(settings))) or True)
    config = tmp_path / "memwarden.toml"
    config.write_text(f'[daemon]\nsocket = "{tmp_path / "s.sock"}"\nstate_dir = "{tmp_path / "state"}"\n')
    assert memwardend.main(["--config", str(config)]) == 7
    assert seen == [("mallopt", {M_ARENA_MAX: 1}), ("daemon", None)]


def test_checking_the_config_changes_no_malloc_setting(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(memwardend, "mallopt", lambda settings: called.append(settings) or True)
    config = tmp_path / "memwarden.toml"
    config.write_text("[daemon]\n")
    assert memwardend.main(["--config", str(config), "--check-config"]) == 0
    assert called == []
