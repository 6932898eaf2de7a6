"""The Docker Engine API as memwarden speaks it: http.client over the engine's unix socket (or TCP).

The container watch lists, inspects and follows containers, reads a stats snapshot when a cgroup cannot be read,
and restarts one; the Ollama service control stops and starts one. That is six calls, and the docker SDK (with
requests and urllib3) would add ~6.7 MB to a daemon that must stay small. Paths are unversioned: the engine
answers them in its own current API version. An ssh:// engine is reached through the docker SDK, which
knows how (and is then imported).

`connect(url, timeout)` returns an object with the SDK's names for these calls (`api.containers`,
`api.inspect_container`, `api.stats`, `api.restart`, `events`, `close`), so the probe takes either.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit


class EngineError(Exception):
    """The engine answered with an error (status and its message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Events:
    """The engine's event stream: one decoded JSON object per event; close() from another thread ends it."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._conn = conn
        self._resp = resp

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            while line := self._resp.readline():
                if line.strip():
                    yield json.loads(line)
        finally:
            self._conn.close()

    def close(self) -> None:
        """Shut the socket: the thread blocked reading sees the stream end (or break off) and closes it."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Engine:
    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url
        self.timeout = timeout
        self.api = self  # the SDK's low-level client lives under .api; here they are one

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return _UnixConnection(parts.path, timeout if timeout is not None else self.timeout)
        port = parts.port or (443 if parts.scheme == "https" else 2375)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return cls(parts.hostname or "localhost", port, timeout=timeout if timeout is not None else self.timeout)

    def _request(self, method: str, path: str, query: dict[str, Any] | None = None,
                 timeout: float | None = None) -> Any:
        conn = self._connection(timeout)
        try:
            target = path + ("?" + urlencode(query) if query else "")
            conn.request(method, target, headers={"Host": "docker"})
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise EngineError(f"Docker at {self.url}: {exc}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                message = json.loads(body).get("message") or body.decode(errors="replace")
            except ValueError:
                message = body.decode(errors="replace")
            raise EngineError(f"{resp.status}: {message.strip()[:300]}", resp.status)
        return json.loads(body) if body.strip() else None

    # ---- the calls ---------------------------------------------------------------------------------------

    def containers(self, quiet: bool = False) -> list[dict[str, Any]]:
        return self._request("GET", "/containers/json") or []

    def inspect_container(self, container: str) -> dict[str, Any]:
        return self._request("GET", f"/containers/{quote(container, safe='')}/json")

    def stats(self, container: str, stream: bool = False, one_shot: bool = True) -> dict[str, Any]:
        return self._request("GET", f"/containers/{quote(container, safe='')}/stats",
                             {"stream": "false", "one-shot": "true" if one_shot else "false"})

    def restart(self, container: str, timeout: int = 10) -> None:
        self._request("POST", f"/containers/{quote(container, safe='')}/restart", {"t": int(timeout)},
                      timeout=self.timeout + timeout)

    def stop(self, container: str, timeout: int = 10) -> None:
        try:
            self._request("POST", f"/containers/{quote(container, safe='')}/stop", {"t": int(timeout)},
                          timeout=self.timeout + timeout)
        except EngineError as exc:
            if exc.status != 304:  # already stopped
                raise

    def start(self, container: str) -> None:
        try:
            self._request("POST", f"/containers/{quote(container, safe='')}/start")
        except EngineError as exc:
            if exc.status != 304:  # already running
                raise

    def events(self, decode: bool = True, filters: dict[str, Any] | None = None) -> Events:
        conn = self._connection(None)
        query = {"filters": json.dumps({k: [v] if isinstance(v, str) else v for k, v in (filters or {}).items()})}
        try:
            conn.request("GET", "/events?" + urlencode(query), headers={"Host": "docker"})
            resp = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise EngineError(f"Docker at {self.url}: {exc}") from None
        if resp.status >= 400:
            body = resp.read()
            conn.close()
            raise EngineError(f"{resp.status}: {body.decode(errors='replace').strip()[:300]}", resp.status)
        if conn.sock is not None:
            conn.sock.settimeout(None)  # the stream is quiet for as long as nothing happens
        return Events(conn, resp)

    def close(self) -> None:
        pass  # a connection per call: nothing stays open


def connect(url: str, timeout: float = 60.0) -> Any:
    if url.startswith("ssh://"):
        import docker

        return docker.DockerClient(base_url=url, timeout=int(timeout))
    return Engine(url, timeout)
