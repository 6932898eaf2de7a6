"""The package under real systemd: install, socket activation, journald, reload, crash and watchdog restarts,
stop, upgrade and purge — each driven the way an admin does, with systemctl, memwardenctl and journalctl.

The tests share one booted machine and run in file order; each leaves the service active for the next.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from memwarden import __version__
from support.nspawn import Machine
from support.ollama_double.manager import wait_until

# Building the package and booting the machine (fixtures) are bounded by tests/support/nspawn.py instead: on a
# loaded machine they may take longer than any one test should.
pytestmark = pytest.mark.timeout(600, func_only=True)

UNIT = "memwarden.service"
SIM_FILE = "/var/lib/memwarden-sim/gpu.json"
# The sim GPU, so a probe can be made to hang; a short probe timeout and watchdog so the hung-probe restart
# takes seconds, not the shipped 30 s.
E2E_CONFIG = f"""\
[daemon]
probe_timeout = "2s"

[gpu]
backend = "sim"
sim_file = "{SIM_FILE}"

[metrics]
enabled = true

# Configured, and not running in the machine: its probe.degraded alert is a warning for the journal to carry.
[ollama]
url = "http://127.0.0.1:11434"
"""
WATCHDOG_S = 6
WATCHDOG_DROPIN = f"""\
[Service]
WatchdogSec={WATCHDOG_S}s
"""


def own_entries(m: Machine, message: str) -> list[dict[str, object]]:
    """The daemon's own journal entries (not PID 1's about the unit) whose MESSAGE starts so, this boot."""
    return [e for e in m.journal("-b", "_SYSTEMD_UNIT=memwarden.service", "SYSLOG_IDENTIFIER=memwarden")
            if str(e.get("MESSAGE", "")).startswith(message)]


def eventually(predicate, timeout: float, message: str):
    # Each look is a process started inside the machine: a few per second is plenty.
    return wait_until(predicate, timeout=timeout, interval=0.25, message=message)


def systemd_says(m: Machine, pattern: str) -> list[str]:
    """PID 1's messages about the unit matching a regex."""
    out = m.run("journalctl", "--no-pager", "-b", "_PID=1", "-o", "cat").stdout
    return [line for line in out.splitlines() if "memwarden.service" in line and re.search(pattern, line)]


def wait_active(m: Machine, not_pid: int = 0, timeout: float = 60) -> int:
    """Wait until the service is active with a main pid other than not_pid; return that pid."""
    def settled() -> int | None:
        props = m.show(UNIT, "ActiveState", "MainPID")
        pid = int(props["MainPID"])
        return pid if props["ActiveState"] == "active" and pid not in (0, not_pid) else None
    return eventually(settled, timeout, f"{UNIT} active with a pid other than {not_pid}")


def ctl_json(m: Machine, *args: str) -> object:
    return json.loads(m.run("memwardenctl", "--json", *args).stdout)


@pytest.fixture(scope="module")
def installed(machine: Machine) -> Machine:
    return machine


@pytest.fixture(scope="module")
def configured(installed: Machine) -> Iterator[Machine]:
    """The sim GPU (so a probe can be made to hang) and a short watchdog; restarted on them."""
    m = installed
    m.write(SIM_FILE, json.dumps({"gpus": [{"index": 0, "name": "Sim 8G", "total_bytes": 8 << 30}]}))
    m.write("/etc/memwarden/memwarden.toml", E2E_CONFIG, mode=0o640)
    m.run("chgrp", "memwarden", "/etc/memwarden/memwarden.toml")
    m.write("/etc/systemd/system/memwarden.service.d/e2e.conf", WATCHDOG_DROPIN)
    m.run("systemctl", "daemon-reload")
    m.run("systemctl", "restart", UNIT)
    yield m


def test_install_creates_user_units_and_conffile_and_starts(installed: Machine) -> None:
    m = installed
    assert m.run("dpkg-query", "-W", "-f=${Status} ${Version}", "memwarden").stdout == \
        f"install ok installed {__version__}-1"
    assert "/etc/memwarden/memwarden.toml" in m.run("dpkg-query", "-W", "-f=${Conffiles}", "memwarden").stdout
    assert m.run("stat", "-c", "%U:%G %a", "/etc/memwarden/memwarden.toml").stdout.split() == \
        ["root:memwarden", "640"]
    assert "memwarden" in m.run("id", "-nG", "memwarden").stdout.split()
    # A system account: no login shell, home is the state directory.
    passwd = m.run("getent", "passwd", "memwarden").stdout.strip().split(":")
    assert passwd[5] == "/var/lib/memwarden" and passwd[6].endswith("nologin")
    for unit in ("memwarden.socket", UNIT):
        assert m.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
    # postinst started both; the shipped config passes its own check.
    assert m.is_active("memwarden.socket") == "active" and m.is_active(UNIT) == "active"
    assert m.run("memwardend", "--check-config").returncode == 0
    assert m.run("readlink", "/usr/bin/memwardenctl").stdout.strip() == "/opt/memwarden/bin/memwardenctl"
    assert m.run("test", "-s", "/usr/share/man/man8/memwardend.8.gz").returncode == 0
    # Byte-code compiled at install, not shipped.
    assert m.sh("ls /opt/memwarden/lib/python3*/site-packages/memwarden/__pycache__/*.pyc | head -1").stdout


def test_setup_training_targets_the_packages_venv_and_needs_root(installed: Machine) -> None:
    m = installed
    dry = m.run("memwardenctl", "setup", "training", "--dry-run", "--cpu").stdout.splitlines()
    assert dry[:2] == ["torch build: cpu (--cpu given)", "venv: /opt/memwarden"]
    commands = [line for line in dry if line.startswith("$ ")]
    assert len(commands) == 2 and all(c.startswith("$ /opt/memwarden/bin/python -m pip install ") for c in commands)
    assert "--index-url https://download.pytorch.org/whl/cpu 'torch>=2.3'" in commands[0]
    refused = m.run("runuser", "-u", "nobody", "--", "memwardenctl", "setup", "training", check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == ("memwardenctl: /opt/memwarden/bin is not writable by this user: run it as root "
                              "(sudo memwardenctl setup training)\n")


def test_first_client_starts_the_service_by_socket_activation(configured: Machine) -> None:
    m = configured
    m.run("systemctl", "stop", UNIT)
    assert m.is_active(UNIT) == "inactive"
    assert m.is_active("memwarden.socket") == "active"
    status = ctl_json(m, "status")
    assert status["version"] == __version__
    assert m.is_active(UNIT) == "active"
    assert status["pid"] == m.main_pid()
    assert "memwarden.socket" in m.show(UNIT, "TriggeredBy")["TriggeredBy"]


def test_socket_admits_the_group_and_refuses_others(configured: Machine) -> None:
    m = configured
    m.run("useradd", "--no-create-home", "--groups", "memwarden", "viewer")
    m.run("useradd", "--no-create-home", "outsider")
    viewer = m.run("runuser", "-u", "viewer", "--", "memwardenctl", "--json", "status", check=False)
    assert viewer.returncode == 0, viewer.stderr
    outsider = m.run("runuser", "-u", "outsider", "--", "memwardenctl", "status", check=False)
    assert outsider.returncode != 0
    assert "ermission denied" in outsider.stderr and "/run/memwarden/control.sock" in outsider.stderr
    # A group member may read but not change state.
    reload = m.run("runuser", "-u", "viewer", "--", "memwardenctl", "reload", check=False)
    assert reload.returncode != 0 and "admin" in (reload.stderr + reload.stdout).lower()


def test_journal_entries_carry_priority_and_structured_fields(configured: Machine) -> None:
    m = configured
    starting = eventually(lambda: own_entries(m, "memwardend starting"), timeout=30, message="a start entry")[-1]
    assert starting["PRIORITY"] == "6"
    assert starting["VERSION"] == __version__
    assert starting["STATE_DIR"] == "/var/lib/memwarden"
    assert starting["GPU_BACKEND"] == "sim"
    assert starting["_SYSTEMD_UNIT"] == UNIT
    # Alerts are warnings with a stable MESSAGE_ID per kind (the configured Ollama is not running in the machine).
    alerts = eventually(lambda: [e for e in m.journal("-b", "SYSLOG_IDENTIFIER=memwarden")
                                 if str(e.get("MESSAGE", "")).startswith("alert:") and "MESSAGE_ID" in e],
                        timeout=30, message="an alert entry with a MESSAGE_ID")
    assert {a["PRIORITY"] for a in alerts} <= {"2", "3", "4", "5", "6"}
    assert any(a["PRIORITY"] == "4" and "ollama" in str(a["MESSAGE"]) for a in alerts)
    assert all(re.fullmatch(r"[0-9a-f]{32}", str(a["MESSAGE_ID"])) for a in alerts)


def test_metrics_are_served_on_loopback_under_the_hardened_unit(configured: Machine) -> None:
    scrape = ("import urllib.request; "
              "print(urllib.request.urlopen('http://127.0.0.1:9847/metrics', timeout=10).read().decode())")
    text = eventually(lambda: configured.run("python3", "-c", scrape, check=False).stdout, 30, "a metrics page")
    samples = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    gpu_total = [v for k, v in samples.items() if k.startswith('memwarden_gpu_memory_total_bytes{gpu="0"')]
    assert gpu_total == [8 << 30]
    assert samples[f'memwarden_build_info{{version="{__version__}"}}'] == 1
    assert samples["memwarden_host_memory_total_bytes"] > 0


def test_reload_with_a_bad_config_keeps_the_service_and_its_config(configured: Machine) -> None:
    m = configured
    pid = m.main_pid()
    failed_before = len(own_entries(m, "config reload failed"))
    m.write("/etc/memwarden/memwarden.toml", '[daemon]\nsample_interval = "often"\n', mode=0o640)
    m.run("systemctl", "reload", UNIT)
    failed = eventually(lambda: own_entries(m, "config reload failed")[failed_before:], timeout=30,
                        message="the daemon to refuse the bad config")[-1]
    assert "daemon.sample_interval" in str(failed["ERRORS"])
    assert m.is_active(UNIT) == "active" and m.main_pid() == pid
    # The running config is the old one.
    assert ctl_json(m, "call", "config.show")["config"]["gpu"]["backend"] == "sim"

    reloaded_before = len(own_entries(m, "config reloaded"))
    m.write("/etc/memwarden/memwarden.toml", E2E_CONFIG, mode=0o640)
    m.run("systemctl", "reload", UNIT)
    eventually(lambda: own_entries(m, "config reloaded")[reloaded_before:], timeout=30,
               message="the good config to be reloaded")
    assert m.main_pid() == pid


def test_kill_9_is_restarted_by_systemd_with_state_intact(configured: Machine) -> None:
    m = configured
    added = ctl_json(m, "memories", "add", "--profile", "e2e", "--kind", "fact", "--importance", "3",
                     "the state database survives a crash")
    before = m.show(UNIT, "NRestarts", "MainPID")
    m.run("kill", "-9", before["MainPID"])
    new_pid = wait_active(m, not_pid=int(before["MainPID"]))
    assert new_pid != int(before["MainPID"])
    assert int(m.show(UNIT, "NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
    assert systemd_says(m, r"Main process exited, code=killed, status=9/KILL")
    memory = ctl_json(m, "memories", "show", str(added["id"]))
    assert memory["content"] == "the state database survives a crash"


def test_a_hung_probe_stops_the_watchdog_and_systemd_restarts_the_daemon(configured: Machine) -> None:
    m = configured
    before = m.show(UNIT, "NRestarts", "MainPID")
    # Another process holds the sim-GPU file's lock: the probe's read blocks in flock() like a hung NVML call.
    m.run("systemd-run", "--unit=e2e-hold-gpu", "--service-type=exec", "flock", "--exclusive", SIM_FILE,
          "sleep", "infinity")
    eventually(lambda: systemd_says(m, r"Watchdog timeout"), timeout=60, message="systemd's watchdog timeout")
    # Restarted: a new process, still blocked on the same lock, so not ready yet.
    eventually(lambda: int(m.show(UNIT, "NRestarts")["NRestarts"]) > int(before["NRestarts"]), timeout=60,
               message="the restart after the watchdog")
    m.run("systemctl", "stop", "e2e-hold-gpu")
    # The lock released, the blocked read completes and the daemon in place reads the GPU again...
    def healthy() -> dict | None:
        if m.is_active(UNIT) != "active":
            return None
        status = ctl_json(m, "status")
        return status if "gpu" not in status["degraded"] else None
    first = eventually(healthy, 60, "the gpu probe to read again")
    pid = first["pid"]
    assert pid != int(before["MainPID"])
    # ...and keeps feeding the watchdog: it is still the same process after more than one WatchdogSec of passes.
    passes = int(WATCHDOG_S / first["last_sample"]["interval_s"]) + 2

    def passed() -> bool:
        status = ctl_json(m, "status")
        return status["pid"] == pid and status["last_sample"]["count"] >= first["last_sample"]["count"] + passes
    eventually(passed, 60, f"{passes} more sample passes by pid {pid}")
    assert m.main_pid() == pid
    # Before it was killed, the daemon said which probe was stuck.
    assert any(e.get("PROBE") == "gpu" and "stuck" in str(e.get("ERROR"))
               for e in own_entries(m, "probe degraded"))


def test_stop_exits_cleanly_and_the_socket_stays(configured: Machine) -> None:
    m = configured
    stopped_before = len(own_entries(m, "memwardend stopped"))
    m.run("systemctl", "stop", UNIT)
    props = m.show(UNIT, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert len(own_entries(m, "memwardend stopped")) == stopped_before + 1
    assert m.is_active("memwarden.socket") == "active"
    ctl_json(m, "status")
    wait_active(m)


def test_hardening_exposure_is_low(configured: Machine) -> None:
    out = configured.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    level = re.search(r"Overall exposure level for memwarden\.service: (\d+\.\d+)", out)
    assert level, out[-500:]
    assert float(level.group(1)) <= 2.5, out


def test_reinstall_keeps_the_admins_config_and_restarts(configured: Machine) -> None:
    m = configured
    pid = m.main_pid()
    deb = m.run("sh", "-c", "ls /mnt/deb/memwarden_*.deb").stdout.strip()
    m.run("dpkg", "-i", deb, timeout=300)
    assert m.read("/etc/memwarden/memwarden.toml") == E2E_CONFIG
    wait_active(m, not_pid=pid)


def test_purge_stops_the_service_and_removes_its_files(configured: Machine) -> None:
    m = configured
    m.run("dpkg", "--purge", "memwarden", timeout=120)
    assert m.is_active(UNIT) in ("inactive", "unknown")
    assert m.is_active("memwarden.socket") in ("inactive", "unknown")
    for path in ("/opt/memwarden", "/var/lib/memwarden", "/etc/memwarden/memwarden.toml",
                 "/lib/systemd/system/memwarden.service", "/etc/systemd/system/sockets.target.wants/memwarden.socket"):
        assert m.run("test", "-e", path, check=False).returncode != 0, f"{path} left after purge"
    # The system user stays, so files it owned elsewhere never pass to a reused uid.
    assert m.run("getent", "passwd", "memwarden", check=False).returncode == 0
