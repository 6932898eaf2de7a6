"""A container labelled `memwarden.ollama_url=URL` pointing at a server that answers junk.

Anyone who can run a container (or publish an image) writes its labels. The daemon reads only URLs its config
lists (ollama.url, containers.ollama_urls); whatever those answer is bounded and checked. Either way the sample
passes, READY and the watchdog go on. The engine is support/fake_docker.py; the junk server is on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from support.fake_docker import FakeDocker
from support.junk_http import JunkServer
from support.ollama_double.manager import wait_until

WATCHDOG = {"WATCHDOG_USEC": "30000000"}  # systemd's WatchdogSec=30s: a WATCHDOG=1 after every pass

MiB = 1 << 20


@pytest.fixture
def junk() -> Iterator[JunkServer]:
    server = JunkServer(json.dumps(["not", {"models": "here"}]).encode())
    yield server
    server.close()


def count(d, key: str) -> int:
    return sum(1 for m in list(d.notify.messages) if key in m)


def start_watching(make_daemon, label_url: str, **containers):
    d = make_daemon(env=WATCHDOG)
    engine = FakeDocker(d.workdir / "docker.sock").__enter__()
    engine.add("labelled", image="app:1", labels={"memwarden.ollama_url": label_url}, working_set=64 * MiB)
    d.write_config({**d.sections, "containers": {"enabled": True, "docker_url": engine.url, **containers}})
    d.start()
    return d, engine


def passes_go_on(d) -> None:
    wait_until(lambda: d.call("containers.list")["containers"], 20, message="the container in a pass")
    pings = count(d, "WATCHDOG")
    wait_until(lambda: count(d, "WATCHDOG") >= pings + 5, 30, message="five more watchdog pings")
    assert [a for a in d.call("alerts", {"limit": 50})["active"] if a["kind"] == "component.failed"] == []
    assert not any(e.get("event") == "sample pass failed" for e in d.log_events())
    assert d.proc.poll() is None


def test_a_label_naming_an_unlisted_url_is_never_fetched(make_daemon, junk):
    d, engine = start_watching(make_daemon, junk.url)
    try:
        passes_go_on(d)
        assert junk.requests == 0
        (row,) = d.call("containers.list")["containers"]
        assert row["name"] == "labelled" and row["models_loaded"] is None
        ignored = [e for e in d.log_events() if "memwarden.ollama_url" in str(e.get("event"))]
        assert len(ignored) == 1 and "ignored" in ignored[0]["event"], ignored  # said once, not every pass
    finally:
        engine.__exit__()


def test_junk_from_a_listed_url_is_an_unknown_count_not_a_crash(make_daemon, junk):
    d, engine = start_watching(make_daemon, junk.url + "/", ollama_urls=[junk.url])
    try:
        passes_go_on(d)
        assert junk.requests >= 5  # read every pass, and every answer refused
        (row,) = d.call("containers.list")["containers"]
        assert row["models_loaded"] is None
        said = [e for e in d.log_events() if "cannot count the models" in str(e.get("event"))]
        assert len(said) == 1 and "not Ollama's /api/ps" in said[0]["event"], said
    finally:
        engine.__exit__()


def test_a_listed_url_that_answers_like_ollama_is_read(make_daemon):
    server = JunkServer(json.dumps({"models": [{"name": "llama3:latest", "size": 1}]}).encode())
    d, engine = start_watching(make_daemon, server.url, ollama_urls=[server.url])
    try:
        wait_until(lambda: [r for r in d.call("containers.list")["containers"] if r["models_loaded"] == 1], 20,
                   message="one model loaded in the labelled container")
    finally:
        engine.__exit__()
        server.close()
