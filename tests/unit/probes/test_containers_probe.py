import queue
import threading
import time
from pathlib import Path

import pytest

from memwarden.probes import containers as containers_mod
from memwarden.probes.containers import ContainerProbe, DockerUnavailable
from memwarden.snapshots import ContainersSnapshot

MiB = 1 << 20
DEADLINE = 5.0
END = object()


def wait_for(predicate, what: str, timeout: float = DEADLINE) -> None:
    """Poll a predicate until it holds; fail after a deadline (the events thread runs on its own)."""
    gate = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        gate.wait(0.002)


class FakeStream:
    """Docker's decoded events stream: blocks until the test pushes an event; END (or close) ends it."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self.requested = 0  # how many times the consumer asked for the next event
        self.closed = False

    def push(self, event) -> None:
        self._queue.put(event)

    def end(self) -> None:
        self._queue.put(END)

    def close(self) -> None:
        self.closed = True
        self._queue.put(END)

    def __iter__(self):
        return self

    def __next__(self):
        with self._cond:
            self.requested += 1
            self._cond.notify_all()
        item = self._queue.get(timeout=30)
        if item is END:
            raise StopIteration
        return item

    def wait_requested(self, n: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.requested >= n, timeout=DEADLINE):
                pytest.fail(f"events consumer never asked for event #{n}")

    def push_and_wait(self, event) -> None:
        """Push one event and return once the consumer has applied it (and asked for the next)."""
        with self._cond:
            n = self.requested
        self.push(event)
        self.wait_requested(n + 1)


class FakeAPI:
    def __init__(self, docker: "FakeDocker"):
        self._d = docker

    def containers(self, quiet=False):
        assert quiet is True
        return [{"Id": cid} for cid in self._d.containers]

    def inspect_container(self, cid):
        self._d.inspected.append(cid)
        if cid not in self._d.containers:
            raise LookupError(f"No such container: {cid}")
        return self._d.containers[cid]

    def stats(self, cid, stream=True, one_shot=False):
        assert stream is False and one_shot is True
        self._d.stats_calls.append(cid)
        if cid not in self._d.stats:
            raise LookupError(f"No such container: {cid}")
        return self._d.stats[cid]


class FakeDocker:
    """State shared by every client the factory hands out (the Docker engine)."""

    def __init__(self):
        self.containers: dict[str, dict] = {}
        self.stats: dict[str, dict] = {}
        self.inspected: list[str] = []
        self.stats_calls: list[str] = []


class FakeClient:
    def __init__(self, docker: FakeDocker):
        self.api = FakeAPI(docker)
        self.stream = FakeStream()
        self.events_filters = None
        self.closed = False

    def events(self, decode=False, filters=None):
        assert decode is True
        self.events_filters = filters
        return self.stream

    def close(self):
        self.closed = True


class Factory:
    """Hands out clients queued by the test; raises (Docker unreachable) when none is queued."""

    def __init__(self, docker: FakeDocker):
        self.docker = docker
        self.ready: queue.Queue = queue.Queue()
        self.calls = 0
        self.clients: list[FakeClient] = []
        self.gate = threading.Event()
        self.gate.set()

    def add_client(self) -> FakeClient:
        client = FakeClient(self.docker)
        self.ready.put(client)
        return client

    def __call__(self):
        self.gate.wait(DEADLINE)
        self.calls += 1
        try:
            client = self.ready.get_nowait()
        except queue.Empty:
            raise ConnectionRefusedError("connection refused") from None
        self.clients.append(client)
        return client


class Clock:
    def __init__(self):
        self.now = 5000.0

    def __call__(self):
        return self.now


def attrs(cid: str, name: str, pid: int, image: str = "app:1", limit: int = 0, labels=None, restarts: int = 0):
    return {"Id": cid, "Name": f"/{name}", "Config": {"Image": image, "Labels": labels or {}},
            "State": {"Pid": pid, "StartedAt": "2024-05-01T10:00:00Z"}, "HostConfig": {"Memory": limit},
            "RestartCount": restarts}


def add_cgroup(proc: Path, cg: Path, cid: str, pid: int, current: int, inactive: int, anon: int) -> Path:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\n")
    d = cg / "system.slice" / f"docker-{cid}.scope"
    d.mkdir(parents=True)
    (d / "memory.current").write_text(f"{current}\n")
    (d / "memory.stat").write_text(f"anon {anon}\ninactive_file {inactive}\n")
    return d


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(containers_mod, "RETRY_S", 0.01)
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    proc.mkdir()
    cg.mkdir()
    docker = FakeDocker()
    factory = Factory(docker)
    clock = Clock()
    # A short timeout: read() may wait up to half of it for the first connection attempt.
    probe = ContainerProbe("unix:///fake.sock", proc_root=proc, cgroup_root=cg, client_factory=factory, clock=clock,
                           timeout=0.2)

    class Env:
        pass

    e = Env()
    e.proc, e.cg, e.docker, e.factory, e.clock, e.probe = proc, cg, docker, factory, clock, probe
    yield e
    factory.gate.set()
    probe.close()
    if probe._thread is not None:
        probe._thread.join(DEADLINE)
        assert not probe._thread.is_alive(), "events thread did not stop on close()"


def start_synced(e) -> FakeClient:
    client = e.factory.add_client()
    e.probe.start()
    client.stream.wait_requested(1)  # listed, now following events
    return client


def names(snap: ContainersSnapshot) -> list[str]:
    return [c.name for c in snap.containers]


# ---- tests -------------------------------------------------------------------------------------------------

def test_initial_list_read_from_cgroups(env):
    add_cgroup(env.proc, env.cg, "b" * 64, 101, current=300 * MiB, inactive=100 * MiB, anon=150 * MiB)
    add_cgroup(env.proc, env.cg, "a" * 64, 102, current=50 * MiB, inactive=10 * MiB, anon=30 * MiB)
    env.docker.containers["b" * 64] = attrs("b" * 64, "web", 101, image="nginx:1", limit=512 * MiB,
                                            labels={"com.docker.compose.service": "frontend", "x": "1"},
                                            restarts=2)
    env.docker.containers["a" * 64] = attrs("a" * 64, "api", 102)
    client = start_synced(env)

    snap = env.probe.read()
    assert client.events_filters == {"type": "container"}
    assert snap.taken_at == env.clock.now
    assert snap.cgroup_version == 2
    assert names(snap) == ["api", "web"]  # sorted by name
    web = snap.containers[1]
    assert web.id == "b" * 64
    assert web.image == "nginx:1"
    assert (web.usage, web.working_set, web.rss) == (300 * MiB, 200 * MiB, 150 * MiB)
    assert web.limit == 512 * MiB
    assert web.restart_count == 2
    assert web.compose_service == "frontend"
    assert web.labels == (("com.docker.compose.service", "frontend"), ("x", "1"))
    assert web.started_at == "2024-05-01T10:00:00Z"
    assert web.source == "cgroup"
    assert env.docker.stats_calls == []
    assert env.probe.api_fallbacks == 0


def test_read_uses_current_cgroup_values_without_asking_docker(env):
    d = add_cgroup(env.proc, env.cg, "c1", 7, current=100 * MiB, inactive=0, anon=100 * MiB)
    env.docker.containers["c1"] = attrs("c1", "one", 7)
    start_synced(env)
    assert env.probe.read().containers[0].working_set == 100 * MiB
    inspected = len(env.docker.inspected)
    (d / "memory.current").write_text(f"{140 * MiB}\n")
    assert env.probe.read().containers[0].working_set == 140 * MiB
    assert len(env.docker.inspected) == inspected


def test_stats_api_fallback_without_a_cgroup(env):
    env.docker.containers["c1"] = attrs("c1", "nocg", 999)  # no /proc/999: cgroup unknown
    env.docker.stats["c1"] = {"memory_stats": {"usage": 80 * MiB, "stats": {
        "inactive_file": 30 * MiB, "anon": 40 * MiB}}}
    start_synced(env)
    snap = env.probe.read()
    (c,) = snap.containers
    assert c.source == "api"
    assert (c.usage, c.working_set, c.rss) == (80 * MiB, 50 * MiB, 40 * MiB)
    assert env.docker.stats_calls == ["c1"]
    assert env.probe.api_fallbacks == 1
    assert snap.cgroup_version is None


def test_stats_api_fallback_v1_totals(env):
    env.docker.containers["c1"] = attrs("c1", "v1", 0)  # pid 0: not running as far as inspect knows
    env.docker.stats["c1"] = {"memory_stats": {"usage": 80 * MiB, "stats": {
        "total_inactive_file": 60 * MiB, "inactive_file": 1, "total_rss": 15 * MiB}}}
    start_synced(env)
    (c,) = env.probe.read().containers
    assert (c.working_set, c.rss, c.source) == (20 * MiB, 15 * MiB, "api")


def test_stats_api_fallback_when_the_cgroup_vanishes(env):
    d = add_cgroup(env.proc, env.cg, "c1", 7, current=100 * MiB, inactive=0, anon=100 * MiB)
    env.docker.containers["c1"] = attrs("c1", "one", 7)
    env.docker.stats["c1"] = {"memory_stats": {"usage": 90 * MiB, "stats": {}}}
    start_synced(env)
    assert env.probe.read().containers[0].source == "cgroup"
    (d / "memory.current").unlink()
    (d / "memory.stat").unlink()
    (c,) = env.probe.read().containers
    assert (c.source, c.working_set) == ("api", 90 * MiB)


def test_container_whose_stats_fail_is_left_out_and_named_unread(env):
    env.docker.containers["c1"] = attrs("c1", "flaky", 999)  # no cgroup, no stats
    start_synced(env)
    snap = env.probe.read()
    assert snap.containers == () and snap.unread == {"flaky"}


def test_start_event_adds_a_container(env):
    client = start_synced(env)
    assert env.probe.read().containers == ()
    add_cgroup(env.proc, env.cg, "new1", 55, current=10 * MiB, inactive=0, anon=10 * MiB)
    env.docker.containers["new1"] = attrs("new1", "fresh", 55)
    client.stream.push_and_wait({"Type": "container", "Action": "start", "id": "new1",
                                 "Actor": {"ID": "new1", "Attributes": {"name": "fresh"}}})
    snap = env.probe.read()
    assert names(snap) == ["fresh"]
    assert snap.containers[0].source == "cgroup"
    assert env.probe.events_seen == 1


def test_start_event_with_actor_id_only(env):
    client = start_synced(env)
    env.docker.containers["new1"] = attrs("new1", "fresh", 0)
    env.docker.stats["new1"] = {"memory_stats": {"usage": 1, "stats": {}}}
    client.stream.push_and_wait({"Action": "start", "Actor": {"ID": "new1"}})
    assert names(env.probe.read()) == ["fresh"]


@pytest.mark.parametrize("action", ["die", "destroy", "stop"])
def test_gone_events_remove_a_container(env, action):
    add_cgroup(env.proc, env.cg, "c1", 7, current=MiB, inactive=0, anon=MiB)
    add_cgroup(env.proc, env.cg, "c2", 8, current=MiB, inactive=0, anon=MiB)
    env.docker.containers["c1"] = attrs("c1", "one", 7)
    env.docker.containers["c2"] = attrs("c2", "two", 8)
    client = start_synced(env)
    assert names(env.probe.read()) == ["one", "two"]
    client.stream.push_and_wait({"status": action, "id": "c1", "Action": action})
    assert names(env.probe.read()) == ["two"]


@pytest.mark.parametrize("action", ["kill", "oom"])
def test_signal_and_oom_events_keep_a_running_container(env, action):
    """`docker kill -s HUP` and an OOM-killed child leave the container running; "die" follows if it stops."""
    add_cgroup(env.proc, env.cg, "c1", 7, current=MiB, inactive=0, anon=MiB)
    env.docker.containers["c1"] = attrs("c1", "one", 7)
    client = start_synced(env)
    client.stream.push_and_wait({"status": action, "id": "c1", "Action": action,
                                 "Actor": {"ID": "c1", "Attributes": {"signal": "1"}}})
    assert names(env.probe.read()) == ["one"]
    client.stream.push_and_wait({"status": "die", "id": "c1", "Action": "die"})
    assert env.probe.read().containers == ()


def test_die_then_destroy_is_harmless(env):
    env.docker.containers["c1"] = attrs("c1", "one", 0)
    env.docker.stats["c1"] = {"memory_stats": {"usage": 1, "stats": {}}}
    client = start_synced(env)
    client.stream.push_and_wait({"Action": "die", "id": "c1"})
    client.stream.push_and_wait({"Action": "destroy", "id": "c1"})
    assert env.probe.read().containers == ()
    assert env.probe.events_seen == 2


def test_rename_event_updates_the_name(env):
    add_cgroup(env.proc, env.cg, "c1", 7, current=MiB, inactive=0, anon=MiB)
    env.docker.containers["c1"] = attrs("c1", "old", 7)
    client = start_synced(env)
    assert names(env.probe.read()) == ["old"]
    env.docker.containers["c1"] = attrs("c1", "new", 7)
    client.stream.push_and_wait({"Action": "rename", "id": "c1",
                                 "Actor": {"ID": "c1", "Attributes": {"name": "new", "oldName": "/old"}}})
    snap = env.probe.read()
    assert names(snap) == ["new"]
    assert snap.containers[0].id == "c1"


def test_start_event_for_a_container_already_gone_is_ignored(env):
    client = start_synced(env)
    client.stream.push_and_wait({"Action": "start", "id": "ghost"})
    assert env.probe.read().containers == ()
    assert "ghost" in env.docker.inspected


def test_unrelated_events_change_nothing(env):
    env.docker.containers["c1"] = attrs("c1", "one", 0)
    env.docker.stats["c1"] = {"memory_stats": {"usage": 1, "stats": {}}}
    client = start_synced(env)
    inspected = len(env.docker.inspected)
    client.stream.push_and_wait({"Action": "exec_start: sh -c true", "id": "c1"})
    client.stream.push_and_wait({"Action": "health_status: healthy", "id": "c1"})
    client.stream.push_and_wait({"Action": "start"})  # no id at all
    assert names(env.probe.read()) == ["one"]
    assert len(env.docker.inspected) == inspected


def test_read_raises_before_the_first_sync(env):
    env.factory.gate.clear()  # the factory blocks: still connecting
    env.factory.add_client()
    with pytest.raises(DockerUnavailable, match="not connected"):
        env.probe.read()
    env.factory.gate.set()
    wait_for(lambda: env.factory.clients and env.factory.clients[0].stream.requested >= 1, "first sync")
    assert env.probe.read().containers == ()


def test_read_raises_when_the_factory_raises_then_recovers(env):
    env.probe.start()
    wait_for(lambda: env.factory.calls >= 2, "two failed connection attempts")
    with pytest.raises(DockerUnavailable, match=r"unreachable: connection refused"):
        env.probe.read()
    env.docker.containers["c1"] = attrs("c1", "one", 0)
    env.docker.stats["c1"] = {"memory_stats": {"usage": MiB, "stats": {}}}
    env.factory.add_client()
    wait_for(lambda: env.factory.clients and env.factory.clients[0].stream.requested >= 1, "recovery")
    assert names(env.probe.read()) == ["one"]


def test_events_stream_end_makes_read_raise_until_docker_is_back(env):
    env.docker.containers["c1"] = attrs("c1", "one", 0)
    env.docker.stats["c1"] = {"memory_stats": {"usage": MiB, "stats": {}}}
    first = start_synced(env)
    assert names(env.probe.read()) == ["one"]

    calls = env.factory.calls
    first.stream.end()
    wait_for(lambda: env.factory.calls >= calls + 1, "a reconnection attempt after the stream ended")
    with pytest.raises(DockerUnavailable, match="unreachable"):
        env.probe.read()
    assert first.closed  # the broken client was closed

    # While Docker was away, c1 went and c2 came: the re-list picks up the change.
    del env.docker.containers["c1"]
    env.docker.containers["c2"] = attrs("c2", "two", 0)
    env.docker.stats["c2"] = {"memory_stats": {"usage": MiB, "stats": {}}}
    second = env.factory.add_client()
    second.stream.wait_requested(1)
    assert names(env.probe.read()) == ["two"]

    # and events on the new stream are followed
    env.docker.containers["c3"] = attrs("c3", "three", 0)
    env.docker.stats["c3"] = {"memory_stats": {"usage": MiB, "stats": {}}}
    second.stream.push_and_wait({"Action": "start", "id": "c3"})
    assert names(env.probe.read()) == ["three", "two"]


def test_refresh_reinspects_one_container(env):
    add_cgroup(env.proc, env.cg, "c1", 7, current=10 * MiB, inactive=0, anon=10 * MiB)
    add_cgroup(env.proc, env.cg, "c1-after", 8, current=20 * MiB, inactive=0, anon=20 * MiB)
    env.docker.containers["c1"] = attrs("c1", "one", 7)
    start_synced(env)
    assert env.probe.read().containers[0].working_set == 10 * MiB
    # restarted by memwarden: new pid (its cgroup here is a different directory)
    env.docker.containers["c1"] = attrs("c1", "one", 8, restarts=1)
    env.probe.refresh("c1")
    (c,) = env.probe.read().containers
    assert (c.working_set, c.restart_count) == (20 * MiB, 1)


def test_close_stops_the_events_thread(env):
    client = start_synced(env)
    env.probe.close()
    env.probe._thread.join(DEADLINE)
    assert not env.probe._thread.is_alive()
    assert client.stream.closed and client.closed
