"""Out of the box, on a machine without Ollama: the daemon says nothing about Ollama (issue 11's "quiet by
default"); it alerts only for an Ollama that was configured, or that answered at its default address once."""

from __future__ import annotations

import socket

import pytest

from support.ollama_double.manager import wait_until


def _something_answers_at_ollamas_default_address() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 11434)) == 0


def test_no_ollama_at_the_default_address_is_no_alert(make_daemon):
    if _something_answers_at_ollamas_default_address():
        pytest.skip("something listens at 127.0.0.1:11434")
    d = make_daemon()
    del d.sections["ollama"]  # nothing about Ollama in the file: the default address is tried
    d.write_config(d.sections)
    d.start()
    wait_until(lambda: d.call("status")["last_sample"]["count"] >= 5, timeout=20, message="five sample passes")
    status = d.call("status")
    assert status["degraded"] == {} and "degraded" not in status["summary"]
    assert [a for a in d.call("alerts")["active"] if a["kind"] == "probe.degraded"] == []
    assert d.call("gpu")["ollama_error"], "`gpu` still says why there is no Ollama"
    events = d.log_events()
    assert [e["probe"] for e in events if e.get("event") == "nothing answers the probe; going on without it"] \
        == ["ollama"]
    assert [e for e in events if e.get("event") == "probe degraded"] == []
