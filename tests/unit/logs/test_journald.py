import os
import re
from pathlib import Path

import pytest

from memwarden.logs.journald import (
    PRIORITY_OF_LEVEL,
    JournalLogger,
    field_name,
    journal_fields,
    message_id,
    stderr_is_journal,
)


def fields(method="info", **event):
    return journal_fields(None, method, event)


# ---- journal_fields --------------------------------------------------------------------------------------


def test_basic_mapping():
    out = fields(event="probe failed", level="error", probe="host", attempts=3)
    assert out == {"MESSAGE": "probe failed", "PRIORITY": "3", "SYSLOG_IDENTIFIER": "memwarden",
                   "PROBE": "host", "ATTEMPTS": "3"}


@pytest.mark.parametrize(("level", "priority"), list(PRIORITY_OF_LEVEL.items()))
def test_level_maps_to_priority(level, priority):
    assert fields(event="x", level=level)["PRIORITY"] == str(priority)


def test_level_defaults_to_method_name_then_info():
    assert fields("warning", event="x")["PRIORITY"] == "4"
    assert fields("msg", event="x")["PRIORITY"] == "6"


def test_explicit_priority_wins():
    out = fields(event="alert resolved", level="info", priority=5)
    assert out["PRIORITY"] == "5"
    assert "LEVEL" not in out


def test_message_id_and_timestamp():
    out = fields(event="x", level="info", message_id="abc123", timestamp="2024-01-01")
    assert out["MESSAGE_ID"] == "abc123"
    assert "TIMESTAMP" not in out
    assert "MESSAGE_ID" not in fields(event="x")


def test_values_are_encoded():
    out = fields(event="x", inputs={"warn": 85.0, "path": Path("/x")}, items=[1, "a"],
                 pair=(1, 2), flag=True, ratio=0.5, nothing=None)
    assert out["INPUTS"] == '{"warn":85.0,"path":"/x"}'
    assert out["ITEMS"] == '[1,"a"]'
    assert out["PAIR"] == "[1,2]"
    assert out["FLAG"] == "True"
    assert out["RATIO"] == "0.5"
    assert "NOTHING" not in out


def test_non_string_event_is_stringified():
    assert fields(event={"a": 1})["MESSAGE"] == '{"a":1}'
    assert fields()["MESSAGE"] == ""


def test_exception_field():
    out = fields(event="boom", level="error", exception="Traceback ...\nValueError: x")
    assert out["EXCEPTION"] == "Traceback ...\nValueError: x"


def test_keys_cannot_override_core_fields():
    out = fields(event="real", level="info", message="fake", syslog_identifier="other")
    assert out["MESSAGE"] == "real"
    assert out["SYSLOG_IDENTIFIER"] == "memwarden"


def test_input_dict_is_not_mutated():
    event = {"event": "x", "level": "info", "a": 1}
    journal_fields(None, "info", event)
    assert event == {"event": "x", "level": "info", "a": 1}


def test_all_field_names_are_valid_journal_fields():
    out = fields(event="x", **{"alert-kind": "a", "9lives": 1, "ümlaut": 2, "_hidden": 3, "1_lead": 4})
    for name in out:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", name), name


# ---- message_id ------------------------------------------------------------------------------------------


def test_message_id_is_stable_32_hex():
    mid = message_id("host.ram")
    assert re.fullmatch(r"[0-9a-f]{32}", mid)
    assert mid == message_id("host.ram")
    # Pinned: journalctl MESSAGE_ID= filters in the wild depend on this exact value.
    assert mid == "002509d566d856d081b39cfd28de53ba"
    assert message_id("host.swap") == "dfbc7ca8877b564abea7e4514ce339d9"


def test_message_ids_differ_per_kind():
    assert len({message_id(k) for k in ("host.ram", "host.swap", "host.psi", "gpu.vram")}) == 4


# ---- field_name ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("probe", "PROBE"),
        ("alert_kind", "ALERT_KIND"),
        ("alert-kind", "ALERT_KIND"),
        ("hold.s", "HOLD_S"),
        ("_private", "PRIVATE"),
        ("__dunder__", "DUNDER__"),
        ("9lives", "LIVES"),
        ("123", None),
        ("___", None),
        ("", None),
        ("x" * 100, "X" * 64),
    ],
)
def test_field_name(key, expected):
    assert field_name(key) == expected


@pytest.mark.parametrize("key", ["1_a", "9_lives", "_1_x", "0-value"])
def test_field_name_never_starts_with_underscore(key):
    # journald treats fields starting with "_" as trusted and drops them when a client sends them.
    name = field_name(key)
    assert name is None or not name.startswith("_"), name


# ---- JournalLogger ---------------------------------------------------------------------------------------


def test_journal_logger_sends_fields():
    sent = []
    logger = JournalLogger(send=lambda **kw: sent.append(kw))
    logger.msg(MESSAGE="hello", PRIORITY="6")
    logger.error(MESSAGE="bad", PRIORITY="3")
    logger.critical(MESSAGE="worse", PRIORITY="2")
    assert sent == [{"MESSAGE": "hello", "PRIORITY": "6"}, {"MESSAGE": "bad", "PRIORITY": "3"},
                    {"MESSAGE": "worse", "PRIORITY": "2"}]


def test_journal_logger_falls_back_to_stderr_when_journal_is_gone(capfd):
    def send(**_kw):
        raise ConnectionRefusedError(111, "Connection refused")

    JournalLogger(send=send).warning(MESSAGE="still here", PRIORITY="4")
    err = capfd.readouterr().err
    assert err.startswith("<4>still here (")
    assert "Connection refused" in err


def test_journal_logger_works_as_structlog_final_logger():
    import structlog

    sent = []
    logger = structlog.wrap_logger(
        JournalLogger(send=lambda **kw: sent.append(kw)),
        processors=[structlog.processors.add_log_level, journal_fields],
    )
    logger.warning("disk low", free_bytes=5, message_id="m1")
    (entry,) = sent
    assert entry == {"MESSAGE": "disk low", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "memwarden",
                     "MESSAGE_ID": "m1", "FREE_BYTES": "5"}


# ---- stderr_is_journal -----------------------------------------------------------------------------------


@pytest.fixture
def temp_fd(tmp_path):
    fd = os.open(tmp_path / "stream", os.O_CREAT | os.O_RDWR)
    yield fd
    os.close(fd)


def test_stderr_is_journal_matches_dev_and_inode(temp_fd):
    st = os.fstat(temp_fd)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd=temp_fd) is True


@pytest.mark.parametrize("stream", ["", "garbage", "1:2:3", "x:y", ":"])
def test_stderr_is_journal_bad_values(temp_fd, stream):
    assert stderr_is_journal({"JOURNAL_STREAM": stream}, fd=temp_fd) is False


def test_stderr_is_journal_other_stream(temp_fd):
    st = os.fstat(temp_fd)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fd=temp_fd) is False
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev + 1}:{st.st_ino}"}, fd=temp_fd) is False


def test_stderr_is_journal_unset(temp_fd):
    assert stderr_is_journal({}, fd=temp_fd) is False


def test_stderr_is_journal_closed_fd(tmp_path):
    fd = os.open(tmp_path / "s", os.O_CREAT | os.O_RDWR)
    st = os.fstat(fd)
    os.close(fd)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd=fd) is False
