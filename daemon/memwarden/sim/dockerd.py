"""A private Docker engine for the demo, tests and benchmarks: its own dockerd on its own dirs, and an offline image.

Never the machine's engine: dockerd runs with `--data-root`, `--exec-root`, `--pidfile` and a unix socket under
one short dir in /tmp (a unix socket path must stay under 108 bytes), without iptables or a bridge. The image is
built offline from the host's static busybox (`/bin/busybox`, Debian's busybox-static) and `docker import`ed, so
nothing is pulled from a registry. Every container runs with `--network none`.

    engine = DockerEngine()
    if missing := engine.missing(): pytest.skip(...)
    engine.start(); engine.build_image()
    c = engine.run("leaker", leaker(2))        # a container writing 2 MB/s into /dev/shm
    engine.stop(); engine.start()              # dockerd gone mid-run, then back on the same dirs
    engine.cleanup()                           # containers, dockerd, dirs
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
IMAGE = "memwarden-test/busybox:1"
# The applets the recipes use; each is a symlink to busybox in the image's /bin.
APPLETS = ("sh", "sleep", "usleep", "dd", "rm", "ls", "cat", "echo", "head", "seq", "true", "mkdir", "ps",
           "free", "du", "df", "kill")
LABEL = "memwarden-test"  # every container made here carries it, so cleanup finds them all


def leaker(mb_per_s: float, step_s: float = 0.5) -> str:
    """A steady leak: `mb_per_s` MB more in /dev/shm every second (written in bursts every `step_s`), never
    freed. Integer MB per burst; the sleep is shortened by nothing, so the rate is a hair under the figure."""
    per_step_kb = max(1, round(mb_per_s * 1024 * step_s))
    return (f"i=0; while true; do dd if=/dev/zero of=/dev/shm/f$i bs=1k count={per_step_kb} 2>/dev/null; "
            f"i=$((i+1)); usleep {round(step_s * 1e6)}; done")


def steady(mb: int = 8) -> str:
    """Holds `mb` MB in /dev/shm and then does nothing."""
    return f"dd if=/dev/zero of=/dev/shm/hold bs=1M count={mb} 2>/dev/null; while true; do sleep 1; done"


def sawtooth(mb_per_s: int = 5, grow_s: int = 4, low_s: int = 1, top_first: bool = False,
             leak_kb_per_cycle: int = 0) -> str:
    """Grows `mb_per_s` MB/s for `grow_s` seconds, frees it all, stays low `low_s` seconds; again and again
    (a garbage collector's pattern: troughs level, so no leak). `top_first`: the first tooth is written at once,
    so the cycle is watched from its top. `leak_kb_per_cycle`: that much more is kept at every drop, never freed
    (a leak under the cycle: its troughs climb)."""
    fill = (f"for i in $(seq {grow_s}); do dd if=/dev/zero of=/dev/shm/s$i bs=1M count={mb_per_s} 2>/dev/null; "
            "done; sleep 1; rm -f /dev/shm/s*; " if top_first else "")
    keep = (f"dd if=/dev/zero of=/dev/shm/leak$n bs=1k count={leak_kb_per_cycle} 2>/dev/null; n=$((n+1)); "
            if leak_kb_per_cycle > 0 else "")
    return (f"n=0; {fill}while true; do for i in $(seq {grow_s}); do dd if=/dev/zero of=/dev/shm/s$i bs=1M "
            f"count={mb_per_s} 2>/dev/null; sleep 1; done; rm -f /dev/shm/s*; {keep}sleep {low_s}; done")


def requirements() -> list[str]:
    """What this machine lacks to run a private engine, in words (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append(f"root (dockerd needs it; running as uid {os.geteuid()})")
    if shutil.which("dockerd") is None:
        missing.append("dockerd (apt-get install docker.io)")
    if shutil.which("containerd") is None:
        missing.append("containerd (apt-get install containerd)")
    if not BUSYBOX.is_file():
        missing.append(f"{BUSYBOX} (apt-get install busybox-static)")
    else:
        with BUSYBOX.open("rb") as f:
            head = f.read(4096)
        if b"/lib64/ld-linux" in head or b"/lib/ld-linux" in head:
            missing.append(f"a static {BUSYBOX} (this one is dynamically linked; apt-get install busybox-static)")
    try:
        import docker  # noqa: F401
    except ImportError:
        missing.append("the docker Python package (pip install docker)")
    return missing


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix) or point == prefix[:-1]:
                out.append(point)
    return out


@dataclass
class DockerEngine:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mwdk", dir="/tmp")))
    start_timeout: float = 60.0
    proc: subprocess.Popen | None = None
    _client: Any = None
    _log: Any = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def missing(self) -> list[str]:
        return requirements()

    # ---- dockerd ---------------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        r = self.root
        return ["dockerd", "--data-root", str(r / "data"), "--exec-root", str(r / "exec"), "--pidfile",
                str(r / "pid"), "-H", self.url, "--iptables=false", "--ip6tables=false", "--bridge=none",
                # Its own containerd under exec-root, and no config file of the machine's.
                "--config-file", str(r / "daemon.json"), "--log-level", "warn"]

    def start(self) -> DockerEngine:
        """Start dockerd (again, on the same dirs) and wait until it answers a ping."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        assert len(str(self.socket)) < 100, f"socket path too long for sun_path: {self.socket}"
        (self.root / "daemon.json").write_text("{}\n")
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if self.client().ping():
                    return self
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                self._drop_client()
            time.sleep(0.1)
        raise TimeoutError(f"dockerd did not answer within {self.start_timeout:.0f}s ({last!r}); log:\n"
                           f"{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM dockerd and wait for it (it stops its containers first: keep their stop timeouts short)."""
        self._drop_client()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Its whole session: dockerd, its containerd, and the shims it started.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=self.url, timeout=60, version="1.41")
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    # ---- the image ------------------------------------------------------------------------------------

    def build_image(self, tag: str = IMAGE) -> str:
        """`docker import` a rootfs of the host's static busybox and its applet symlinks (no registry)."""
        api = self.client().api
        with contextlib.suppress(Exception):
            if api.inspect_image(tag):
                return tag
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in ("bin", "dev", "dev/shm", "etc", "proc", "sys", "tmp"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
                tar.addfile(info)
            data = BUSYBOX.read_bytes()
            info = tarfile.TarInfo("bin/busybox")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
            for applet in APPLETS:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(link)
        repository, _, version = tag.rpartition(":")
        api.import_image_from_data(buf.getvalue(), repository=repository, tag=version,
                                   changes=['ENV PATH=/bin', 'CMD ["sh"]'])
        return tag

    # ---- containers -----------------------------------------------------------------------------------

    def run(self, name: str, script: str, *, labels: Mapping[str, str] | None = None, mem_limit: str | None = None,
            shm_size: str = "1g", restart_policy: str | None = None, stop_timeout: int = 1,
            image: str = IMAGE) -> Any:
        """Create and start a container running `sh -c script` with no network; returns the SDK's Container.

        stop_timeout is short because busybox sh as PID 1 ignores SIGTERM: every stop ends in SIGKILL."""
        client = self.client()
        api = client.api
        host_config = api.create_host_config(
            network_mode="none", shm_size=shm_size, mem_limit=mem_limit,
            restart_policy={"Name": restart_policy} if restart_policy else None)
        created = api.create_container(image, command=["sh", "-c", script], name=name, host_config=host_config,
                                       labels={LABEL: "1", **(labels or {})}, stop_timeout=stop_timeout)
        api.start(created["Id"])
        return client.containers.get(created["Id"])

    def inspect(self, name: str) -> dict[str, Any]:
        return self.client().api.inspect_container(name)

    def remove_all(self) -> None:
        """Remove every container this module made (force: running ones too)."""
        client = self.client()
        for c in client.containers.list(all=True, filters={"label": LABEL}):
            with contextlib.suppress(Exception):
                c.remove(force=True)

    def cleanup(self) -> None:
        """Containers, dockerd, then the dirs (only once nothing is mounted under them any more)."""
        try:
            if self.running:
                with contextlib.suppress(Exception):
                    self.remove_all()
        finally:
            self.stop()
        leftover = _mounts_under(self.root)
        for point in reversed(leftover):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        if _mounts_under(self.root):
            raise RuntimeError(f"mounts left under {self.root}; not removing it")
        shutil.rmtree(self.root, ignore_errors=True)


def started_at(engine: DockerEngine, name: str) -> str:
    return engine.inspect(name)["State"]["StartedAt"]


def env_for_cli(engine: DockerEngine) -> dict[str, str]:
    """An environment in which the `docker` CLI talks to this engine (and only to it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = engine.url
    return env
