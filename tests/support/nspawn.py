"""A Debian 12 machine booted with `systemd-nspawn -b`: real systemd as PID 1, real journald, real dpkg.

The rootfs is made once by debootstrap and cached (MEMWARDEN_E2E_CACHE); each Machine boots a copy of it, so
what one run installs never leaks into the next. Commands run inside through nsenter, which needs no
systemd-machined on the host (this host's PID 1 need not be systemd at all).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

from support.ollama_double.manager import wait_until

SUITE = "bookworm"
MIRROR = os.environ.get("MEMWARDEN_E2E_MIRROR", "http://deb.debian.org/debian")
# What a Debian 12 server running memwarden has: systemd as init, python3 for the venv, dbus for systemctl
# talking to PID 1, procps/util-linux (flock) for the tests' own probing.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps", "util-linux", "iproute2")
# Installed by apt in the debootstrapped tree, where systemd is configured: polkitd (the package recommends it,
# to apply the trainer units' rule) fails to configure within debootstrap's own pass.
LATER_PACKAGES = ("polkitd",)
CACHE = Path(os.environ.get("MEMWARDEN_E2E_CACHE", "/var/cache/memwarden-e2e"))
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The package's venv has no torch: a machine that trains borrows the train extra from the host's venv.
TRAIN_MODULES = ("torch", "transformers", "peft")
HOST_SITE = "/mnt/host-site"


# `systemctl is-system-running` answers. "offline" is also what it prints while PID 1's private socket is not up
# yet (systemctl cannot tell that from a manager that is not running), so it means "ask again", as does no answer.
BOOTING = frozenset({"", "offline", "unknown", "initializing", "starting"})
BOOTED = frozenset({"running", "degraded"})
BOOT_TIMEOUT = 300.0  # a loaded 2-core machine booting a container next to other suites
# debootstrap and `make deb` run in session fixtures, outside any test's timeout (the e2e tests time their own
# bodies only): each is bounded here, by far more than it takes on a loaded machine (80 s and 2 min idle).
SETUP_TIMEOUT = 1800.0


class MachineError(RuntimeError):
    pass


def await_boot(ask: Callable[[], str | None], timeout: float, interval: float = 0.25,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """The state the machine's systemd settled in: `ask()` is `systemctl is-system-running`'s answer (None when
    the command failed or timed out), asked again while the boot is still under way until `timeout` seconds
    have passed. Running or degraded is a booted machine; any other final state, or the deadline, is an error."""
    deadline = clock() + timeout
    answers: list[str] = []
    while True:
        state = (ask() or "").strip()
        if not answers or answers[-1] != state:
            answers.append(state)
        if state in BOOTED:
            return state
        if state not in BOOTING:
            raise MachineError(f"boot ended in state {state!r} (answers so far: {answers})")
        if clock() >= deadline:
            raise MachineError(f"no running or degraded state within {timeout:g}s (answers so far: {answers})")
        sleep(interval)


def missing_means() -> str | None:
    """Why this host cannot boot a test machine, or None when it can."""
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it: apt-get install systemd-container debootstrap)"
    return None


def base_rootfs() -> Path:
    """The debootstrapped rootfs, built on first use and kept for later runs (keyed by suite and packages)."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)} {' '.join(LATER_PACKAGES)}".encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{key}"
    if (root / ".complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{SUITE}-", dir=CACHE))
    log = CACHE / "debootstrap.log"
    with open(log, "wb") as out:
        try:
            code, _ = run_bounded(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                                   str(partial), MIRROR], stdout=out, stderr=subprocess.STDOUT)
            if code == 0:  # the host's network, no boot: apt in the tree as in a chroot
                code, _ = run_bounded(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
                                       f"--directory={partial}", "--setenv=DEBIAN_FRONTEND=noninteractive",
                                       "apt-get", "install", "-y", "-q", "--no-install-recommends",
                                       *LATER_PACKAGES], stdout=out, stderr=subprocess.STDOUT)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    if code != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise MachineError(f"debootstrap or apt-get failed with status {code}; see {log}")
    # mkdtemp made the future "/" 0700: system users (messagebus, memwarden) could not reach anything.
    partial.chmod(0o755)
    (partial / "etc/hostname").write_text("mwtest\n")
    (partial / ".complete").touch()
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root


class Machine:
    """One booted container. Use as a context manager; it powers off (or is killed) on exit."""

    def __init__(self, base: Path, binds: Sequence[tuple[Path, str]] = (), boot_timeout: float = BOOT_TIMEOUT):
        self.dir = Path(tempfile.mkdtemp(prefix="mw-machine-", dir="/var/tmp"))
        self.root = self.dir / "rootfs"
        self.binds = binds
        self.boot_timeout = boot_timeout
        self.console = self.dir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self._watched: list[psutil.Process] = []  # nspawn and the container's init, known by pid and start time
        try:
            subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(self.root)], check=True)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def __enter__(self) -> Machine:
        try:
            self.boot(self.boot_timeout)
        except BaseException:
            self.close(graceful=False)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, graceful: bool = True) -> None:
        """Power off (orderly when `graceful`), then kill whatever of the machine is left, and only then delete
        its files: a container's systemd must never outlive its root."""
        try:
            if graceful:
                self.poweroff()
        finally:
            survivors = self.kill()
            if survivors:
                raise MachineError(f"processes {survivors} of the machine survived SIGKILL; {self.dir} is kept")
            shutil.rmtree(self.dir, ignore_errors=True)

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        args = ["systemd-nspawn", "--quiet", "--boot", f"--directory={self.root}", "--machine=mwtest",
                # No systemd-machined or system bus on the host side: run unregistered, in our own cgroup.
                "--register=no", "--keep-unit", "--console=pipe", "--private-network"]
        args += [f"--bind-ro={src}:{dst}" for src, dst in self.binds]
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._watch(self.proc.pid)
        deadline = time.monotonic() + timeout
        self.leader = wait_until(self._find_leader, timeout=timeout, message=self._why_not_booted)
        self._watch(self.leader)
        try:
            await_boot(lambda: self._system_state(deadline), max(0.0, deadline - time.monotonic()))
        except MachineError as exc:
            raise MachineError(f"{exc}; console: {self._console_tail()}") from None

    def _system_state(self, deadline: float) -> str | None:
        """`systemctl is-system-running --wait` inside: it returns once boot is over, whatever the outcome; None
        when it gave no answer (PID 1 not reachable yet, or no answer before the deadline)."""
        try:
            done = self.run("systemctl", "is-system-running", "--wait", check=False,
                            timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None
        return done.stdout.strip() or None

    def _watch(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self._watched.append(psutil.Process(pid))

    def kill(self, timeout: float = 30) -> list[int]:
        """SIGKILL the container's init (which takes every process of its PID namespace with it) and nspawn's
        whole process tree; the pids still alive `timeout` seconds later (none, unless the kernel is stuck)."""
        procs: dict[int, psutil.Process] = {}
        for proc in self._watched:
            with contextlib.suppress(psutil.Error):
                if proc.is_running():  # the same process: psutil compares the start time too
                    procs[proc.pid] = proc
                    procs.update((child.pid, child) for child in proc.children(recursive=True))
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)  # reaps nspawn: it is our child
        # The rest are reaped by whoever inherits them; a zombie is dead already.
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not [p for p in procs.values() if _alive(p)], timeout=timeout, interval=0.05)
        return sorted(pid for pid, p in procs.items() if _alive(p))

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise MachineError(f"systemd-nspawn exited with {self.proc.returncode}: {self._console_tail()}")
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        if not children:
            return None
        pid = int(children[0])
        # PID 1 inside must be systemd itself, not the nspawn helper that still execs it.
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return pid
        return None

    def _console_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.console.read_text(errors="replace")[-2000:]
        return ""

    def _why_not_booted(self) -> str:
        return f"the container's systemd to start; console: {self._console_tail()}"

    def run(self, *argv: str, input: str | None = None, check: bool = True, timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the machine as root, in all its namespaces, with a clean environment."""
        assert self.leader is not None
        cmd = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd=/",
               "env", "-i", f"PATH={INSIDE_PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", *argv]
        done = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise MachineError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def run_in_unit(self, *argv: str, timeout: float = 60, env: dict[str, str] | None = None,
                    ) -> subprocess.CompletedProcess[str]:
        """Run argv as a transient unit of the machine's systemd, as root, its output piped back; an error when
        it fails. Torch's oneMKL does not load in a process nsenter put into the machine ("Cannot load
        libtorch_cpu.so"), and does in the machine's units: whatever imports torch runs this way."""
        setenv = [f"--setenv={k}={v}" for k, v in (env or {}).items()]
        return self.run("systemd-run", "--wait", "--pipe", "--quiet", "--collect", *setenv, *argv, timeout=timeout)

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, check=check, timeout=timeout)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the machine (through its root, so ownership is root's)."""
        self.run("sh", "-c", f"umask 022; mkdir -p \"$(dirname {path})\"; cat > {path}; chmod {mode:o} {path}",
                 input=text)

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout

    # ---- systemd views --------------------------------------------------------------------------------

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def is_active(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()

    def main_pid(self, unit: str = "memwarden.service") -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def journal(self, *args: str) -> list[dict[str, object]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def poweroff(self, timeout: float = 60) -> None:
        """An orderly shutdown (nspawn turns SIGTERM into one for the container's systemd), waited for up to
        `timeout`; whatever is left is for kill()."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_bounded(argv: Sequence[str], timeout: float = SETUP_TIMEOUT, **popen: object) -> tuple[int, bytes]:
    """(exit status, stderr when piped) of a setup command; past `timeout` it is killed with every process it
    started (its own session), and that is an error naming it."""
    proc = subprocess.Popen(argv, start_new_session=True, **popen)  # type: ignore[call-overload]
    try:
        _, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, err or b""


@contextlib.contextmanager
def installed(deb: Path, binds: Sequence[tuple[Path, str]] = ()) -> Iterator[Machine]:
    """A freshly booted machine with the package installed the way an admin does it: dpkg -i with systemd
    running, so postinst enables and starts the units. `binds`: more host directories, read-only."""
    with Machine(base_rootfs(), binds=[(deb.parent, "/mnt/deb"), *binds]) as m:
        m.run("dpkg", "-i", f"/mnt/deb/{deb.name}", timeout=SETUP_TIMEOUT)
        yield m


def train_site() -> Path | None:
    """The site-packages this interpreter's torch, transformers and peft come from, when all three are there."""
    specs = [importlib.util.find_spec(name) for name in TRAIN_MODULES]
    origins = [s.origin for s in specs if s is not None and s.origin is not None]
    sites = {Path(origin).parents[1] for origin in origins}
    return sites.pop() if len(origins) == len(TRAIN_MODULES) and len(sites) == 1 else None


def train_binds() -> list[tuple[Path, str]]:
    """The bind that lend_train_extra needs, when this interpreter has the train extra."""
    site = train_site()
    return [(site, HOST_SITE)] if site else []


def lend_train_extra(m: Machine) -> str | None:
    """Let the installed package's venv import the train extra from the host's site-packages (bound read-only at
    HOST_SITE by train_binds): a .pth file after the venv's own site-packages, in this machine only. Why it
    cannot, or None once it can."""
    if train_site() is None:
        return f"this interpreter lacks the train extra ({', '.join(TRAIN_MODULES)}) that the machine borrows"
    own, same = m.run("/opt/memwarden/bin/python", "-c", "import sys, sysconfig; print(sysconfig.get_paths()"
                      f"['purelib'], sys.version_info[:2] == {tuple(sys.version_info[:2])})").stdout.split()
    if same != "True":
        return (f"the machine's Python is not this interpreter's {sys.version_info[0]}.{sys.version_info[1]}: "
                "the borrowed compiled wheels would not load")
    m.write(f"{own}/zz-memwarden-host-train.pth", f"{HOST_SITE}\n")
    return None


def build_deb(repo: Path, out: Path) -> Path:
    """`make deb`'s script, into `out`; returns the .deb."""
    try:
        code, err = run_bounded([str(repo / "packaging/deb/build.sh")], env={**os.environ, "OUT": str(out)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except subprocess.TimeoutExpired:
        raise MachineError(f"packaging/deb/build.sh took over {SETUP_TIMEOUT:g}s") from None
    if code != 0:
        raise MachineError(f"packaging/deb/build.sh exited with {code}:\n{err.decode(errors='replace')[-3000:]}")
    debs = sorted(out.glob("memwarden_*.deb"))
    if len(debs) != 1:
        raise MachineError(f"expected one .deb in {out}, found {[d.name for d in debs]}")
    return debs[0]

