"""memwardend speaks systemd's protocols: sd_notify, the watchdog, signals and socket activation."""

from __future__ import annotations

import signal
import socket
import subprocess

from support.daemon import BIN


def test_ready_comes_with_a_status_line(daemon):
    ready = next(m for m in daemon.notify.messages if m.get("READY") == "1")
    assert "RAM" in ready["STATUS"] and "alert" in ready["STATUS"]
    status = daemon.call("status")
    assert status["ready"] is True
    assert status["last_sample"]["count"] >= 1


def test_watchdog_pings_follow_sample_passes_when_asked_for(make_daemon):
    d = make_daemon(config={"daemon": {"sample_interval": "30s"}}, env={"WATCHDOG_USEC": "400000"})
    d.start()
    for _ in range(3):
        d.notify.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=10)
    status = d.call("status")
    # A 30 s interval is clamped to half the 0.4 s watchdog period so pings keep coming.
    assert status["last_sample"]["interval_s"] == 0.2
    assert status["last_sample"]["count"] >= 3


def test_no_watchdog_pings_without_watchdog_usec(daemon):
    daemon.notify.wait_for(lambda m: "STATUS" in m and "READY" not in m, timeout=10)
    assert not any("WATCHDOG" in m for m in daemon.notify.messages)


def test_sigterm_sends_stopping_and_exits_zero(daemon):
    daemon.signal(signal.SIGTERM)
    daemon.notify.wait_for(lambda m: m.get("STOPPING") == "1", timeout=10)
    assert daemon.stop() == 0
    assert not daemon.socket_path.exists(), "a socket the daemon bound itself is removed at exit"


def test_sighup_with_a_broken_config_keeps_the_running_one(daemon):
    daemon.write_config("[host]\nram_warn_percent = 'lots'\n[daemon\n")
    daemon.signal(signal.SIGHUP)
    reloading = daemon.notify.wait_for(lambda m: m.get("RELOADING") == "1")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    daemon.notify.wait_for(lambda m: m.get("READY") == "1")
    assert daemon.proc.poll() is None
    shown = daemon.call("config.show")
    assert shown["config"]["host"]["ram_warn_percent"] == 85.0
    failures = [e for e in daemon.log_events() if e.get("event", "").startswith("config reload failed")]
    assert failures and "not valid TOML" in failures[0]["errors"][0]


def test_sighup_applies_a_good_config(daemon):
    sections = {k: dict(v) for k, v in daemon.sections.items()}
    sections["host"] = {"ram_warn_percent": 70, "hold": "3s"}
    daemon.write_config(sections)
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for(lambda m: m.get("RELOADING") == "1")
    daemon.notify.wait_for(lambda m: m.get("READY") == "1")
    shown = daemon.call("config.show")["config"]["host"]
    assert (shown["ram_warn_percent"], shown["hold"]) == (70.0, 3.0)


def test_reload_over_the_socket_reports_what_changed_and_what_needs_a_restart(daemon):
    sections = {k: dict(v) for k, v in daemon.sections.items()}
    sections["daemon"]["sample_interval"] = "1s"
    sections["daemon"]["state_dir"] = str(daemon.workdir / "elsewhere")
    daemon.write_config(sections)
    result = daemon.call("config.reload")
    assert result["reloaded"] is True
    assert result["changed"] == ["daemon.sample_interval", "daemon.state_dir"]
    assert result["restart_required"] == ["daemon.state_dir"]
    assert daemon.call("status")["last_sample"]["interval_s"] == 1.0


def test_socket_activation_uses_the_passed_fd(make_daemon):
    d = make_daemon()
    activated = d.workdir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(activated))
    listener.listen(16)
    # As systemd does: the socket as fd 3, LISTEN_PID naming the process that will run memwardend.
    script = f'exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "{BIN}/memwardend" --config "{d.config_path}"'
    d.start(argv=["sh", "-c", script], stdin=listener.fileno())
    listener.close()
    from memwarden.control.client import Client

    with Client(activated) as c:
        assert c.call("status")["ready"] is True
    assert not d.socket_path.exists(), "with an activated socket the daemon must not bind its own path"
    assert d.stop() == 0
    assert activated.exists(), "the activated socket belongs to systemd; the daemon leaves it in place"


def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon, make_daemon):
    other = make_daemon(config={"daemon": {"socket": str(daemon.socket_path)}})
    other.start(wait_ready=False)
    assert other.proc.wait(60) == 73  # EX_CANTCREAT: see test_cli_endings for the one line it says
    assert "already listening" in other.log()
    assert daemon.call("status")["ready"] is True


def test_check_config_names_every_bad_key_and_exits_non_zero(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[host]\nram_warn_percent = 120\nram_crit = 3\n[alerts]\nwebhook = "ftp://x"\n')
    run = subprocess.run([BIN / "memwardend", "--check-config", "--config", bad], capture_output=True, text=True)
    assert run.returncode == 78
    for path in ("host.ram_warn_percent", "host.ram_crit", "alerts.webhook"):
        assert f"{bad}: at '{path}'" in run.stderr
    good = tmp_path / "good.toml"
    good.write_text("[host]\nram_warn_percent = 80\n")
    ok = subprocess.run([BIN / "memwardend", "--check-config", "--config", good], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
