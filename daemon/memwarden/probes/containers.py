"""Containers: the running set kept current from Docker's events stream, memory read from cgroup files.

The list is fetched once and then followed through events (start, die, destroy, rename), so a sample pass does
not ask Docker anything: it reads each container's cgroup (see cgroup_memory.py). Only when a cgroup cannot
be read does it fall back to the stats API (`one_shot`). Docker unreachable raises, which the probe runner
reports as a degraded state; the events thread keeps retrying and re-lists when Docker is back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memwarden.logs import get_logger
from memwarden.probes.cgroup_memory import cgroup_dir, read_memory
from memwarden.snapshots import ContainerMemory, ContainersSnapshot

log = get_logger()

# Only events that mean the container is no longer running. "kill" is any signal sent through Docker (`docker kill
# -s HUP`) and "oom" any process of the container OOM-killed: both often leave it running, and dropping it then
# would stop the watch on exactly the container in memory trouble until its next start. When the container does
# stop, "die" follows.
GONE_EVENTS = {"die", "stop", "destroy"}
RETRY_S = 2.0


class DockerUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Watched:
    id: str
    name: str
    image: str
    pid: int
    limit: int
    restart_count: int
    labels: tuple[tuple[str, str], ...]
    started_at: str | None
    cgroup: Path | None


def _watched(attrs: dict[str, Any], proc_root: Path, cgroup_root: Path) -> Watched:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    pid = int(state.get("Pid") or 0)
    try:
        cgroup = cgroup_dir(pid, proc_root, cgroup_root) if pid else None
    except (OSError, ValueError):
        cgroup = None
    return Watched(
        id=attrs["Id"], name=attrs.get("Name", "").lstrip("/"), image=config.get("Image", ""), pid=pid,
        limit=int((attrs.get("HostConfig") or {}).get("Memory") or 0),
        restart_count=int(attrs.get("RestartCount") or 0),
        labels=tuple(sorted((config.get("Labels") or {}).items())), started_at=state.get("StartedAt"),
        cgroup=cgroup)


class ContainerProbe:
    name = "containers"

    def __init__(self, docker_url: str, proc_root: Path = Path("/proc"),
                 cgroup_root: Path = Path("/sys/fs/cgroup"), client_factory: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time, timeout: float = 10.0):
        self.docker_url = docker_url
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root
        self._factory = client_factory or self._default_client
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._watched: dict[str, Watched] = {}
        self._synced = False
        self._error: str | None = "not connected to Docker yet"
        self._stop = threading.Event()
        self._attempted = threading.Event()  # the events thread's first connection attempt is over
        self._client: Any = None
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self.events_seen = 0
        self.api_fallbacks = 0

    def _default_client(self) -> Any:
        from memwarden.containers.engine import connect

        return connect(self.docker_url, self._timeout)

    # ---- the events thread -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="docker-events", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._attempted.set()  # no read() waits for a first attempt that will not come
        for closable in (self._stream, self._client):
            if closable is not None:
                # Closing a broken connection may fail too; we are leaving anyway.
                with contextlib.suppress(Exception):
                    closable.close()  # the stream's close unblocks the events thread

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._client = self._factory()
                # The events request is sent here, before the list: no start can fall between the two.
                stream = self._stream = self._client.events(decode=True, filters={"type": "container"})
                self._relist()
                self._attempted.set()
                for event in stream:
                    if self._stop.is_set():
                        break
                    self._apply(event)
                raise DockerUnavailable("the Docker events stream ended")
            except Exception as exc:  # noqa: BLE001 - any failure here means "Docker unreachable"; retry
                if self._stop.is_set():
                    break  # close() ended the stream: not Docker going away (no warning at every daemon stop)
                with self._lock:
                    if self._error != f"Docker at {self.docker_url} unreachable: {exc}":
                        log.warning("Docker unreachable", docker_url=self.docker_url, error=repr(exc))
                    self._synced = False
                    self._error = f"Docker at {self.docker_url} unreachable: {exc}"
                with contextlib.suppress(Exception):
                    if self._client is not None:
                        self._client.close()
                self._client = None
                self._attempted.set()
                self._stop.wait(RETRY_S)

    def _relist(self) -> None:
        containers = self._client.api.containers(quiet=True)
        watched = {}
        for c in containers:
            try:
                w = _watched(self._client.api.inspect_container(c["Id"]), self.proc_root, self.cgroup_root)
            except Exception:  # noqa: BLE001 - it went away between the list and the inspect
                continue
            watched[w.id] = w
        with self._lock:
            was_error = self._error
            self._watched = watched
            self._synced = True
            self._error = None
        if was_error and was_error != "not connected to Docker yet":
            log.info("Docker reachable again", docker_url=self.docker_url, containers=len(watched))

    def _apply(self, event: dict[str, Any]) -> None:
        self.events_seen += 1
        action = (event.get("Action") or event.get("status") or "").split(":")[0]
        cid = event.get("id") or (event.get("Actor") or {}).get("ID")
        if not cid:
            return
        if action in GONE_EVENTS:
            with self._lock:
                self._watched.pop(cid, None)
        elif action in ("start", "restart", "unpause", "rename", "update"):
            try:
                w = _watched(self._client.api.inspect_container(cid), self.proc_root, self.cgroup_root)
            except Exception:  # noqa: BLE001 - gone already; its die event follows
                return
            with self._lock:
                self._watched[cid] = w

    # ---- the probe -------------------------------------------------------------------------------------

    def read(self) -> ContainersSnapshot:
        self.start()
        # The daemon's first pass comes right after start(): without this wait it always found the list not
        # fetched yet, and every daemon start raised (and a pass later resolved) a probe.degraded alert.
        self._attempted.wait(min(self._timeout / 2, 5.0))
        with self._lock:
            if not self._synced:
                raise DockerUnavailable(self._error or "Docker not reachable")
            watched = list(self._watched.values())
        out = []
        unread = set()
        version = None
        for w in watched:
            mem = self._memory(w)
            if mem is None:
                unread.add(w.name)
                continue
            usage, working_set, rss, version_or_none, source = mem
            version = version or version_or_none
            labels = dict(w.labels)
            out.append(ContainerMemory(
                id=w.id, name=w.name, image=w.image, working_set=working_set, usage=usage, limit=w.limit, rss=rss,
                restart_count=w.restart_count, compose_service=labels.get("com.docker.compose.service"),
                labels=w.labels, started_at=w.started_at, source=source))
        return ContainersSnapshot(self._clock(), tuple(sorted(out, key=lambda c: c.name)), version,
                                  frozenset(unread))

    def _memory(self, w: Watched) -> tuple[int, int, int | None, int | None, str] | None:
        if w.cgroup is not None:
            try:
                m = read_memory(w.cgroup)
                return m.usage, m.working_set, m.rss, m.version, "cgroup"
            except (OSError, ValueError):
                pass  # the container stopped, or its cgroup moved: ask Docker
        return self._api_memory(w)

    def _api_memory(self, w: Watched) -> tuple[int, int, int | None, int | None, str] | None:
        self.api_fallbacks += 1
        client = self._client
        if client is None:
            return None
        try:
            stats = client.api.stats(w.id, stream=False, one_shot=True)
        except Exception:  # noqa: BLE001 - gone; the events stream will drop it
            return None
        mem = stats.get("memory_stats") or {}
        usage = int(mem.get("usage") or 0)
        stat = mem.get("stats") or {}
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        rss = stat.get("total_rss", stat.get("anon"))
        return usage, max(0, usage - int(inactive)), rss, None, "api"

    def refresh(self, container_id: str) -> None:
        """Re-inspect one container (after memwarden restarted it), so its pid and cgroup are current."""
        client = self._client
        if client is None:
            return
        try:
            w = _watched(client.api.inspect_container(container_id), self.proc_root, self.cgroup_root)
        except Exception:  # noqa: BLE001
            return
        with self._lock:
            self._watched[container_id] = replace(w)
