"""A route the memory store could never use (`adapter = "team@x"`): refused by --check-config, at start and at
reload, always naming `learning.routes[0].adapter`; a refused reload changes nothing at all."""

from __future__ import annotations

import os
import signal
import subprocess

from support.daemon import BIN, toml
from support.ollama_double.manager import wait_until

WATCHDOG = {"WATCHDOG_USEC": "30000000"}  # systemd's WatchdogSec=30s: a WATCHDOG=1 after every pass

GOOD_ROUTE = '[[learning.routes]]\nadapter = "dreams"\nkinds = ["dream"]\n'
BAD_ROUTE = '[[learning.routes]]\nadapter = "team@x"\nprofiles = ["team"]\n'
PATH = "learning.routes[0].adapter"


def test_check_config_refuses_the_route_naming_its_path(tmp_path):
    path = tmp_path / "memwarden.toml"
    path.write_text(BAD_ROUTE)
    out = subprocess.run([BIN / "memwardend", "--check-config", "--config", str(path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "STATE_DIRECTORY": str(tmp_path)})
    assert out.returncode == 78, out
    assert f"at '{PATH}'" in out.stderr and "'team@x'" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_daemon_never_starts_with_it(make_daemon):
    d = make_daemon(env=WATCHDOG)
    d.write_config(d.config_path.read_text() + BAD_ROUTE)
    d.start(wait_ready=False)
    assert d.proc.wait(60) == 78  # EX_CONFIG: the unit's RestartPreventExitStatus= ends a restart loop
    log = d.log()
    assert PATH in log and "Traceback" not in log, log
    assert not any(m.get("READY") == "1" for m in d.notify.messages)


def test_a_reload_with_it_is_refused_whole(make_daemon):
    d = make_daemon(env=WATCHDOG)
    d.write_config(toml(d.sections) + GOOD_ROUTE)
    d.start()
    before = d.call("config.show")
    # Every section changes something, and the routes come last: nothing before them may be applied either.
    changed = {**d.sections,
               "daemon": {**d.sections["daemon"], "sample_interval": "1s", "dry_run": True, "log_level": "warning"},
               "host": {"ram_warn_percent": 70, "ram_crit_percent": 80, "hold": "3s"},
               "gpu": {"backend": "none", "reserve": "1GiB"},
               "containers": {"leak_window": "20m"},
               "alerts": {"renotify_interval": "2h"},
               "learning": {"min_interval": "1h"}}
    d.write_config(toml(changed) + "\n" + BAD_ROUTE)
    reply = d.call("config.reload")
    assert reply["reloaded"] is False
    assert any(PATH in e for e in reply["errors"]), reply
    assert d.call("config.show") == before

    def notifications(key: str) -> int:
        return sum(1 for m in list(d.notify.messages) if key in m)

    reloads, readies = notifications("RELOADING"), notifications("READY")
    d.signal(signal.SIGHUP)  # the same through systemd's ExecReload: RELOADING=1, refused, READY=1
    wait_until(lambda: notifications("RELOADING") > reloads and notifications("READY") > readies, 20,
               message="RELOADING=1 then READY=1 after SIGHUP")
    assert d.call("config.show") == before
    watchdogs = notifications("WATCHDOG")
    wait_until(lambda: notifications("WATCHDOG") > watchdogs, 20, message="a sample pass after the reload")
    assert d.proc.poll() is None
    assert "Traceback" not in d.log()
