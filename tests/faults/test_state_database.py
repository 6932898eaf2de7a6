"""The state database under faults, against the real daemon: a full disk, another process's lock, a corrupt file.

In each case the daemon stays up, the caller gets an error naming the file and the cause, a `state.database`
alert is raised, nothing written before is lost, and — where the cause can go away — writes work again and the
alert resolves once it has.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest
from state_faults import active_state_alerts, fill, memory_lines, tmpfs

from memwarden.control.protocol import APPLICATION_ERROR, RpcError
from support.daemon import BIN, DaemonProcess
from support.ollama_double.manager import wait_until

DB = "memwarden.db"


# While another process holds the database's lock, each write the daemon makes (a method's, or a pass's alert
# history) waits out busy_timeout (5 s) on the loop, and on a loaded machine several can queue before an answer.
UNDER_LOCK = 120.0


def count(d: DaemonProcess) -> int:
    return d.call("memories.count", timeout=UNDER_LOCK)["total"]


def rpc_error(d: DaemonProcess, method: str, params: dict) -> RpcError:
    with pytest.raises(RpcError) as caught:
        d.call(method, params, timeout=UNDER_LOCK)
    return caught.value


def wait_for_state_alert(d: DaemonProcess, fragment: str) -> dict:
    return wait_until(lambda: next((a for a in active_state_alerts(d) if fragment in a["message"]), None),
                      timeout=15, message=lambda: f"a state.database alert about {fragment!r}; "
                                                  f"active: {d.call('alerts', {'limit': 1})['active']}")


def test_disk_full_is_a_clear_error_and_an_alert_and_loses_nothing(make_daemon):
    d = make_daemon()
    state = d.workdir / "state"
    with tmpfs(state, "3m"):
        d.start()
        db = state / DB
        assert d.call("memories.import", {"lines": memory_lines(200)})["imported"] == 200
        assert count(d) == 200
        filler = fill(state)

        # A write that needs room: refused, in words, naming the cause and the file.
        err = rpc_error(d, "memories.import", {"lines": memory_lines(2000, start=200)})
        assert err.code == APPLICATION_ERROR
        assert "database or disk is full" in err.message and str(db) in err.message, err.message
        assert err.message.startswith("memories.import failed: state database write failed")

        alert = wait_for_state_alert(d, "database or disk is full")
        assert alert["severity"] == "critical" and alert["key"] == str(db)
        assert alert["fields"]["cause"] == "disk_full"
        # Up, answering, and every row written before the disk filled is still there.
        assert d.proc.poll() is None and d.call("status")["ready"] is True
        assert count(d) == 200
        assert any(e.get("event") == "control method failed on the state database" and str(db) in e["error"]
                   for e in d.log_events())

        # Space again: the alert resolves by itself and writes work.
        filler.unlink()
        wait_until(lambda: not active_state_alerts(d), timeout=15, message="the state.database alert to resolve")
        assert d.call("memories.import", {"lines": memory_lines(300, start=200)})["imported"] == 300
        assert count(d) == 500
        resolved = [a for a in d.call("alerts", {"limit": 20})["recent"] if a["kind"] == "state.database"]
        assert resolved and resolved[0]["resolved_at"] is not None
        assert d.stop() == 0


def test_a_lock_held_past_busy_timeout_is_a_clear_error_and_an_alert_until_released(make_daemon):
    d = make_daemon().start()
    d.call("memories.import", {"lines": memory_lines(50)})
    db = d.workdir / "state" / DB
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO memories (profile, kind, content, importance, created_at, adapter) "
                      "VALUES ('mallory', 'journal', 'uncommitted', 1, 0, 'mallory')")
        started = time.monotonic()
        err = rpc_error(d, "memories.add", {"profile": "alice", "kind": "journal", "content": "while locked",
                                            "importance": 2})
        assert time.monotonic() - started >= 4.5  # busy_timeout (5 s) was waited out, not skipped
        assert err.code == APPLICATION_ERROR
        assert "database is locked" in err.message and "another process" in err.message and str(db) in err.message
        alert = wait_for_state_alert(d, "database is locked")
        assert alert["fields"]["cause"] == "locked"
        # Reads go on under the lock (WAL), the daemon is up, and nothing was lost.
        assert count(d) == 50 and d.call("status", timeout=UNDER_LOCK)["ready"] is True
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_until(lambda: not active_state_alerts(d), timeout=15, message="the state.database alert to resolve")
    d.call("memories.add", {"profile": "alice", "kind": "journal", "content": "after", "importance": 2})
    assert count(d) == 51
    assert d.proc.poll() is None


def state_db_with_memories(d: DaemonProcess, n: int = 300) -> None:
    """Start the daemon, give it memories (several pages of them) and alert history, and stop it cleanly."""
    d.start()
    d.call("memories.import", {"lines": memory_lines(n, size=400)})
    assert d.stop() == 0


def corrupt_table(db, table: str) -> None:
    """Overwrite the root page of `table` with junk (after a checkpoint, so that the page is in the file)."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "corrupt alert history"])
def test_a_damaged_state_file_stops_the_start_with_one_line_naming_it(make_daemon, damage):
    d = make_daemon()
    db = d.workdir / "state" / DB
    if damage == "garbage":
        db.parent.mkdir(parents=True)
        db.write_bytes(bytes(range(256)) * 400)
    else:
        state_db_with_memories(d)
        if damage == "truncated":
            with open(db, "r+b") as f:
                f.truncate(db.stat().st_size // 2)
        else:
            corrupt_table(db, "alert_history")
    run = subprocess.run([BIN / "memwardend", "--config", d.config_path], env=d.environment(),
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr + run.stdout
    errors = [line for line in (run.stderr + run.stdout).splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, run.stderr
    assert "cannot open state" in errors[0] and str(db) in errors[0], errors[0]
    assert "move" in errors[0] and "aside" in errors[0], errors[0]


def test_a_corrupt_page_met_at_runtime_is_named_and_alerted_and_the_daemon_stays_up(make_daemon):
    d = make_daemon()
    db = d.workdir / "state" / DB
    state_db_with_memories(d)
    corrupt_table(db, "memories")
    d.start()  # nothing at start reads the memories table
    err = rpc_error(d, "memories.list", {"limit": 5})
    assert err.code == APPLICATION_ERROR
    assert "state database is corrupt" in err.message and str(db) in err.message and ".recover" in err.message
    alert = wait_for_state_alert(d, "corrupt")
    assert alert["fields"]["cause"] == "corrupt"
    assert d.call("status")["ready"] is True and d.proc.poll() is None
    # Corruption does not heal: the alert stays pass after pass.
    seen = d.call("status")["last_sample"]["count"]
    wait_until(lambda: d.call("status")["last_sample"]["count"] >= seen + 3, timeout=10)
    assert active_state_alerts(d)


def active_file_alerts(d: DaemonProcess) -> list[dict]:
    return [a for a in d.call("alerts", {"limit": 1})["active"] if a["kind"] == "state.file"]


def foreign_database(path) -> None:
    """Another SQLite file put at `path` by rename, as `mv backup.db memwarden.db` would."""
    other = path.with_name("other.db")
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE theirs (x)")
    conn.execute("INSERT INTO theirs VALUES ('kept')")
    conn.commit()
    conn.close()
    other.rename(path)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_state_database_removed_under_the_daemon_is_written_back_and_nothing_is_lost(make_daemon, how):
    # A pass every second: the writes right after the removal land in the removed file, before the pass sees it.
    d = make_daemon(config={"daemon": {"sample_interval": "1s"}})
    d.start()
    db = d.workdir / "state" / DB
    d.call("memories.import", {"lines": memory_lines(100)})
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
    else:
        foreign_database(db)
    d.call("memories.import", {"lines": memory_lines(20, start=100)})

    alert = wait_until(lambda: next(iter(active_file_alerts(d)), None), timeout=30,
                       message="a state.file alert")
    assert alert["severity"] == "critical" and alert["key"] == str(db)
    assert str(db) in alert["message"] and "nothing lost" in alert["message"]
    assert alert["fields"]["verdict"] == ("gone" if how == "deleted" else "replaced")
    d.call("memories.import", {"lines": memory_lines(30, start=120)})
    d.call("memories.add", {"profile": "alice", "kind": "journal", "content": "after the write-back",
                            "importance": 4})
    assert count(d) == 151
    assert d.stop() == 0

    d.start()  # a fresh process finds everything at the path
    assert count(d) == 151
    contents = {m["content"] for offset in range(0, 151, 50)
                for m in d.call("memories.list", {"limit": 50, "offset": offset})["memories"]}
    assert {f"memory {i}: " + "x" * 200 for i in range(150)} | {"after the write-back"} <= contents
    if how == "replaced":
        [aside] = [p for p in db.parent.iterdir()
                   if p.name.startswith(DB + ".replaced-") and not p.name.endswith(("-wal", "-shm"))]
        assert sqlite3.connect(aside).execute("SELECT x FROM theirs").fetchall() == [("kept",)]
    assert d.stop() == 0
