"""learning.executor resolved: auto is systemd only as a systemd service with a system bus; ray is imported only
when chosen and its absence is a clear error naming the key."""

from __future__ import annotations

import sys

import pytest

from memwarden.learning import executor_choice
from memwarden.learning.executor import SubprocessExecutor
from memwarden.learning.executor_choice import (
    SYSTEM_BUS,
    SYSTEMD_BOOTED,
    ExecutorUnavailable,
    make_executor,
    resolve,
)
from memwarden.learning.systemd_executor import SystemdExecutor

SERVICE = {"INVOCATION_ID": "0123abcd"}


def present(*paths):
    return lambda p: p in paths


def test_auto_is_systemd_only_under_systemd_with_a_bus():
    assert resolve("auto", SERVICE, present(SYSTEMD_BOOTED, SYSTEM_BUS)) == "systemd"
    assert resolve("auto", {}, present(SYSTEMD_BOOTED, SYSTEM_BUS)) == "subprocess"  # started by hand
    assert resolve("auto", SERVICE, present(SYSTEM_BUS)) == "subprocess"  # not booted with systemd
    assert resolve("auto", SERVICE, present(SYSTEMD_BOOTED)) == "subprocess"  # no system bus
    from pathlib import Path

    env = {**SERVICE, "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/srv/bus"}
    assert resolve("auto", env, present(SYSTEMD_BOOTED, Path("/srv/bus"))) == "systemd"


def test_an_explicit_choice_is_kept():
    for kind in ("subprocess", "systemd", "ray"):
        assert resolve(kind, {}, present()) == kind


def test_the_factory_makes_each_executor(make_config, tmp_path):
    assert isinstance(make_executor(make_config({"executor": "subprocess"}), tmp_path, {}), SubprocessExecutor)
    ex = make_executor(make_config({"executor": "systemd"}), tmp_path, {})
    assert isinstance(ex, SystemdExecutor) and ex.host_reserve == make_config({}).host.reserve
    assert isinstance(make_executor(make_config({}), tmp_path, {}), SubprocessExecutor)  # auto, not a service


def test_ray_comes_from_its_module_and_its_absence_names_the_key(make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(executor_choice, "RAY_MODULE", "memwarden.learning.no_such_executor")
    with pytest.raises(ExecutorUnavailable, match=r"learning\.executor: 'ray' needs"):
        make_executor(make_config({"executor": "ray"}), tmp_path, {})

    class Module:
        @staticmethod
        def make_executor(config, runs_dir):
            return ("ray", runs_dir)

    monkeypatch.setitem(sys.modules, "memwarden.learning.no_such_executor", Module)
    assert make_executor(make_config({"executor": "ray"}), tmp_path, {}) == ("ray", tmp_path)
