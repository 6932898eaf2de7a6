"""memwardenctl against a real daemon: tables by default, --json for machines, one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import time

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


def test_config_show_redacts_and_config_check_validates_as_memwardend(daemon, tmp_path):
    shown = ctl(daemon, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert "secrets redacted" in shown.stdout and "[daemon]" in shown.stdout
    assert json.loads(ctl(daemon, "--json", "config", "show").stdout)["config"]["daemon"]["socket"] == str(
        daemon.socket_path)
    good = ctl(daemon, "config", "check", str(daemon.config_path))
    assert (good.returncode, good.stdout.strip()) == (0, f"{daemon.config_path}: OK")
    bad = tmp_path / "bad.toml"
    bad.write_text("[host]\nram_crit_percent = 'x'\n[nope]\n")
    refused = ctl(daemon, "config", "check", str(bad))
    assert refused.returncode == 78
    assert f"{bad}: at 'host.ram_crit_percent'" in refused.stderr and f"{bad}: at 'nope'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_diagnostics_is_a_table(daemon):
    out = ctl(daemon, "diagnostics")
    assert out.returncode == 0, out.stderr
    assert "RSS:" in out.stdout and "heavy modules:" in out.stdout and "none loaded" in out.stdout


def test_version_answers_with_and_without_a_daemon(daemon, tmp_path):
    up = ctl(daemon, "version")
    assert up.returncode == 0
    assert up.stdout.splitlines()[1].startswith("daemon: memwardend 0.") and f"pid {daemon.pid}" in up.stdout
    down = ctl(tmp_path / "absent.sock", "version")
    assert down.returncode == 0 and down.stderr == ""
    assert down.stdout.startswith("memwardenctl ")
    assert "daemon: not reachable (no control socket at" in down.stdout
    assert json.loads(ctl(tmp_path / "absent.sock", "--json", "version").stdout)["daemon"] is None


def test_a_refused_sighup_reload_shows_in_status(daemon):
    assert "last reload: none since the start" in ctl(daemon, "status").stdout
    daemon.write_config("[host]\nram_crit_percent = 'x'\n")
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while (last := daemon.call("status")["last_reload"]) is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the reload runs on the daemon's loop; status is where its end is seen
    assert last is not None and (last["trigger"], last["reloaded"]) == ("SIGHUP", False)
    out = ctl(daemon, "status").stdout
    assert "(SIGHUP): REFUSED, the running config is kept" in out and "at 'host.ram_crit_percent'" in out


def test_train_watch_with_nothing_to_follow_says_so(daemon):
    out = ctl(daemon, "train", "watch", "alice")
    assert out.returncode == 1
    assert out.stderr == ("memwardenctl: no run of alice in progress or pending "
                          "(memwardenctl train start ADAPTER starts one)\n")
