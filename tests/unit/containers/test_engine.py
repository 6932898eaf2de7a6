"""The Engine API client against a fake engine on a unix socket: the calls, their errors, the event stream."""

from __future__ import annotations

import http.client
import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest

from memwarden.containers.engine import Engine, EngineError, connect


class FakeEngine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str]]] = []
    events_open = threading.Event()
    release_events = threading.Event()

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path))
        if self.path == "/containers/json":
            self._json(200, [{"Id": "abc"}])
        elif self.path == "/containers/abc/json":
            self._json(200, {"Id": "abc", "Name": "/app"})
        elif self.path.startswith("/containers/abc/stats"):
            self._json(200, {"memory_stats": {"usage": 5}})
        elif self.path.startswith("/events"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in ({"Action": "start", "id": "abc"}, {"Action": "die", "id": "abc"}):
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.events_open.set()
            self.release_events.wait(10)  # a quiet stream, until the client closes it
        else:
            self._json(404, {"message": "No such container: nope"})

    def do_POST(self) -> None:
        self.seen.append(("POST", self.path))
        if "/stop" in self.path:
            self.send_response(304)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants an address pair


@pytest.fixture
def engine(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = Server(path, FakeEngine)
    FakeEngine.seen = []
    FakeEngine.events_open.clear()
    FakeEngine.release_events.clear()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Engine(f"unix://{path}", timeout=5)
    FakeEngine.release_events.set()
    server.shutdown()
    server.server_close()


def test_list_inspect_stats_and_restart_speak_the_engine_api(engine):
    assert engine.api.containers(quiet=True) == [{"Id": "abc"}]
    assert engine.api.inspect_container("abc")["Name"] == "/app"
    assert engine.api.stats("abc", stream=False, one_shot=True) == {"memory_stats": {"usage": 5}}
    engine.api.restart("abc", timeout=7)
    engine.api.stop("abc", timeout=3)  # 304: already stopped is no error
    engine.api.start("abc")
    assert FakeEngine.seen == [
        ("GET", "/containers/json"), ("GET", "/containers/abc/json"),
        ("GET", "/containers/abc/stats?stream=false&one-shot=true"), ("POST", "/containers/abc/restart?t=7"),
        ("POST", "/containers/abc/stop?t=3"), ("POST", "/containers/abc/start")]


def test_an_engine_error_carries_its_status_and_message(engine):
    with pytest.raises(EngineError) as err:
        engine.api.inspect_container("nope")
    assert err.value.status == 404 and "No such container: nope" in str(err.value)


def test_an_engine_that_is_not_there_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError):
        Engine(f"unix://{tmp_path}/none.sock", timeout=1).containers()


def test_the_event_stream_yields_each_event_and_close_ends_it_from_another_thread(engine):
    stream = engine.events(decode=True, filters={"type": "container"})
    assert ("GET", '/events?filters=%7B%22type%22%3A+%5B%22container%22%5D%7D') in FakeEngine.seen
    got = []

    def follow():
        try:
            for event in stream:
                got.append(event["Action"])
        except (OSError, http.client.HTTPException):
            got.append("broken off")

    reader = threading.Thread(target=follow)
    reader.start()
    assert FakeEngine.events_open.wait(5)
    stream.close()  # what the probe's close() does while its thread waits for the next event
    reader.join(5)
    assert not reader.is_alive() and got[:2] == ["start", "die"]


def test_a_unix_or_tcp_engine_is_spoken_to_without_the_docker_sdk():
    assert isinstance(connect("unix:///var/run/docker.sock"), Engine)
    assert isinstance(connect("tcp://127.0.0.1:2375"), Engine)
