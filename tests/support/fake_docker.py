"""A stand-in Docker engine on a unix socket: the few endpoints memwarden's container probe uses, with
containers a test declares. For tests about what the daemon does with a container's *labels* and answers,
where a real engine (support/docker_engine.py, root and dockerd) adds nothing but requirements.

    with FakeDocker(workdir / "docker.sock") as engine:
        engine.add("web", image="app:1", labels={"memwarden.ollama_url": url}, working_set=64 * MiB)
        config = {"containers": {"enabled": True, "docker_url": engine.url}}

Containers report no pid, so the probe reads their memory through the stats API, as it does when a cgroup
cannot be read. The events stream stays open and silent: the list is what the probe sees.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

API = "1.41"


@dataclass
class FakeContainer:
    id: str
    name: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)
    working_set: int = 64 << 20

    def inspect(self) -> dict[str, Any]:
        return {"Id": self.id, "Name": "/" + self.name, "RestartCount": 0,
                "Config": {"Image": self.image, "Labels": self.labels},
                "State": {"Pid": 0, "Running": True, "StartedAt": "2024-05-01T10:00:00Z"},
                "HostConfig": {"Memory": 0}}

    def stats(self) -> dict[str, Any]:
        return {"memory_stats": {"usage": self.working_set, "stats": {"inactive_file": 0,
                                                                      "anon": self.working_set}}}


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    engine: FakeDocker


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:  # client_address is '' on a unix socket
        pass

    def _json(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        engine = self.server.engine
        path = re.sub(r"^/v[0-9.]+", "", self.path.split("?")[0])
        if path == "/version":
            self._json({"ApiVersion": API, "Version": "fake", "MinAPIVersion": "1.24"})
        elif path == "/_ping":
            self._json("OK")
        elif path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            engine.stopping.wait()
        elif path == "/containers/json":
            self._json([{"Id": c.id} for c in engine.containers.values()])
        elif m := re.fullmatch(r"/containers/([0-9a-f]+)/(json|stats)", path):
            c = engine.containers.get(m.group(1))
            if c is None:
                self._json({"message": f"No such container: {m.group(1)}"}, 404)
            else:
                self._json(c.inspect() if m.group(2) == "json" else c.stats())
        else:
            self._json({"message": f"not in the fake engine: {path}"}, 404)


class FakeDocker:
    def __init__(self, path: Path):
        self.path = path
        self.containers: dict[str, FakeContainer] = {}
        self.stopping = threading.Event()
        self._server = _Server(str(path), _Handler)
        self._server.engine = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def add(self, name: str, image: str = "app:1", labels: dict[str, str] | None = None,
            working_set: int = 64 << 20) -> FakeContainer:
        cid = f"{len(self.containers) + 1:x}".rjust(64, "c")
        c = self.containers[cid] = FakeContainer(cid, name, image, dict(labels or {}), working_set)
        return c

    def __enter__(self) -> FakeDocker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
