"""memwardenctl against a real daemon: tables by default, --json for machines, one-line errors."""

from __future__ import annotations

import json
import subprocess

from support.daemon import BIN


def ctl(daemon_or_path, *args):
    sock = getattr(daemon_or_path, "socket_path", daemon_or_path)
    return subprocess.run([BIN / "memwardenctl", "--socket", sock, *args], capture_output=True, text=True,
                          timeout=30)


def test_status_table_and_json(daemon):
    table = ctl(daemon, "status")
    assert table.returncode == 0
    assert "version:" in table.stdout and "active alerts:" in table.stdout
    raw = ctl(daemon, "--json", "status")
    assert json.loads(raw.stdout)["pid"] == daemon.pid


def test_host_shows_levels(daemon):
    out = ctl(daemon, "host")
    assert out.returncode == 0
    for word in ("RAM:", "admittable:", "METRIC", "ram", "psi"):
        assert word in out.stdout
    data = json.loads(ctl(daemon, "--json", "host").stdout)
    assert data["sampled"] and 0 < data["ram_used_percent"] < 100
    assert data["admittable_bytes"] == max(0, data["mem_available"] - data["reserve"])


def test_alerts_and_reload(daemon):
    assert "active:" in ctl(daemon, "alerts", "--limit", "5").stdout
    assert ctl(daemon, "reload").stdout.startswith("reloaded")


def test_a_refused_reload_exits_non_zero_and_says_why(daemon):
    daemon.write_config("[host]\nram_crit_percent = 'x'\n")
    out = ctl(daemon, "reload")
    assert out.returncode == 1
    assert "at 'host.ram_crit_percent'" in out.stdout


def test_call_reaches_any_method_and_errors_are_one_line(daemon):
    assert "diagnostics" in ctl(daemon, "call", "methods").stdout
    bad = ctl(daemon, "call", "no.such.method")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "method not found" in bad.stderr


def test_no_daemon_is_a_clear_error(tmp_path):
    out = ctl(tmp_path / "absent.sock", "status")
    assert out.returncode == 3
    assert "is memwardend running?" in out.stderr
