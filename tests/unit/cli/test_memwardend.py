"""memwardend's start: the event loop `daemon.event_loop` names, and glibc held to one arena before any thread."""

from __future__ import annotations

import asyncio
import sys

import pytest
import structlog
import uvloop
from structlog.testing import capture_logs

import memwarden.daemon
from memwarden.cli import memwardend
from memwarden.malloc import M_ARENA_MAX


@pytest.fixture(autouse=True)
def logging_kept():
    """memwardend configures structlog for the process, bound to this test's stderr: put back what was there."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_each_name_gives_its_loop():
    assert memwardend.loop_factory("uvloop") is uvloop.new_event_loop
    assert memwardend.loop_factory("asyncio") is asyncio.new_event_loop


def test_without_uvloop_the_daemon_runs_on_asyncio_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    with capture_logs() as logs:
        assert memwardend.loop_factory("uvloop") is asyncio.new_event_loop
    assert [e["log_level"] for e in logs] == ["warning"]
    assert "uvloop cannot be imported" in logs[0]["event"] and logs[0]["error"]


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_the_daemon_runs_on_the_configured_loop_after_one_arena_is_set(name, tmp_path, monkeypatch):
    seen: list[tuple[str, object]] = []

    class Daemon:
        def __init__(self, config, config_arg=None):
            self.config = config

        async def run(self) -> int:
            seen.append(("loop", type(asyncio.get_running_loop()).__module__.split(".")[0]))
            return 7

    monkeypatch.setattr(memwarden.daemon, "Daemon", Daemon)
    monkeypatch.setattr(memwardend, "mallopt", lambda settings: seen.append(("mallopt", dict(settings))) or True)
    config = tmp_path / "memwarden.toml"
    config.write_text(f'[daemon]\nevent_loop = "{name}"\nsocket = "{tmp_path / "s.sock"}"\n'
                      f'state_dir = "{tmp_path / "state"}"\n')
    assert memwardend.main(["--config", str(config)]) == 7
    assert seen == [("mallopt", {M_ARENA_MAX: 1}), ("loop", name)]


def test_an_unknown_loop_is_refused_naming_the_key(tmp_path, capsys):
    config = tmp_path / "memwarden.toml"
    config.write_text('[daemon]\nevent_loop = "trio"\n')
    assert memwardend.main(["--config", str(config)]) == memwardend.EX_CONFIG
    err = capsys.readouterr().err
    assert "daemon.event_loop" in err and "trio" in err
