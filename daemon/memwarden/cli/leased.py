"""The command of `memwardenctl lease`, run so that it never outlives its lease unnoticed.

- It runs in a process group of its own: memwardenctl signals all of it (Ctrl-C, SIGTERM, a preemption), and
  the daemon counts every process of that group as the lease's.
- It gets PR_SET_PDEATHSIG: if memwardenctl dies, even by SIGKILL, the kernel sends the command SIGTERM (the
  signal a trainer already takes as "checkpoint and exit"). Until the lease's processes are all gone the
  daemon keeps the lease, so the GPU ledger never shows it released while the command still holds memory.
- It waits at a gate until the daemon has recorded it as one of the lease's processes, so that nothing it
  starts can escape the lease, however early memwardenctl is killed.
- When memwardenctl leaves, whatever is left of the group gets SIGTERM, then SIGKILL after a grace period.
- At a terminal, the command's group becomes the foreground one: it reads the terminal and gets Ctrl-C, Ctrl-\\
  and Ctrl-Z itself; a stop is passed on to memwardenctl, so the shell's job control still works.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

PR_SET_PDEATHSIG = 1
DEATH_SIGNAL = signal.SIGTERM
FORWARDED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
# Signals memwardenctl may handle or ignore: the command starts with their defaults.
RESET = (*FORWARDED, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE)
GRACE = 10.0  # seconds what is left of the group has to exit after SIGTERM, before SIGKILL
GO = b"1"


@contextlib.contextmanager
def _ignoring(signum: int) -> Iterator[None]:
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _foreground_tty() -> int | None:
    """stdin's terminal, when memwardenctl's group is its foreground group (an interactive run)."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


class LeasedCommand:
    def __init__(self, pid: int, gate: int, tty: int | None):
        self.pid = pid  # also the process group's id
        self._gate: int | None = gate
        self._tty = tty
        self.returncode: int | None = None  # as subprocess reports it: -N for a signal
        self._ttou: Any = None

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str]) -> LeasedCommand:
        """Fork the command; it waits at the gate until start()."""
        libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
        parent = os.getpid()
        tty = _foreground_tty()
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only exec or _exit from here
            try:
                os.close(gate_w)
                os.setpgid(0, 0)
                for s in RESET:
                    signal.signal(s, signal.SIG_DFL)
                libc.prctl(PR_SET_PDEATHSIG, DEATH_SIGNAL)
                if os.getppid() != parent or os.read(gate_r, 1) != GO:
                    os._exit(125)  # memwardenctl died or gave up before the command could start
                os.execvpe(argv[0], argv, env)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.write(2, f"memwardenctl: cannot run {argv[0]}: {exc.strerror or exc}\n".encode())
                os._exit(127 if exc.errno == errno.ENOENT else 126)
            except BaseException:  # noqa: BLE001 - nothing may return into memwardenctl's code in the child
                os._exit(125)
        os.close(gate_r)
        with contextlib.suppress(OSError):  # both sides set it, so neither races the other (as shells do)
            os.setpgid(pid, pid)
        command = cls(pid, gate_w, tty)
        if tty is not None:
            # In the background from now on, memwardenctl may still write its messages (`stty tostop`).
            command._ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            with contextlib.suppress(OSError):
                os.tcsetpgrp(tty, pid)
        return command

    def start(self) -> None:
        """Open the gate: the command execs."""
        if self._gate is not None:
            with contextlib.suppress(OSError):
                os.write(self._gate, GO)
            self.abort()

    def abort(self) -> None:
        """Close the gate unopened: a command still waiting there exits without running."""
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None

    def signal(self, signum: int) -> None:
        """Send `signum` to the whole group while any of it runs."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait(self) -> int:
        """Wait for the command itself to exit; its status as subprocess reports it."""
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, os.WUNTRACED)
            except ChildProcessError:  # reaped already (by group_alive)
                break
            if os.WIFSTOPPED(status):
                self._stopped()
            else:
                self.returncode = os.waitstatus_to_exitcode(status)
        self._take_terminal_back()
        if self._ttou is not None:
            signal.signal(signal.SIGTTOU, self._ttou)
            self._ttou = None
        return self.returncode if self.returncode is not None else 0

    def _stopped(self) -> None:
        """Ctrl-Z stopped the command: stop memwardenctl too, so the shell sees its job stopped; on `fg` or
        `bg` let the command go on, in the foreground only if memwardenctl was given it."""
        if self._tty is None:
            return  # stopped by someone else, who will continue it
        self._take_terminal_back()
        os.kill(os.getpid(), signal.SIGSTOP)
        with contextlib.suppress(OSError):
            if os.tcgetpgrp(self._tty) == os.getpgrp():
                os.tcsetpgrp(self._tty, self.pid)
        self.signal(signal.SIGCONT)

    def _take_terminal_back(self) -> None:
        if self._tty is None:
            return
        with contextlib.suppress(OSError), _ignoring(signal.SIGTTOU):
            if os.tcgetpgrp(self._tty) == self.pid:
                os.tcsetpgrp(self._tty, os.getpgrp())

    def _reap(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)

    def group_alive(self) -> bool:
        self._reap()
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # a member runs as another user (a set-uid program): still running
        return True

    def end_group(self, grace: float = GRACE) -> bool:
        """SIGTERM what is left of the group, SIGKILL after `grace` seconds; True once nothing of it is left."""
        self.abort()
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not self.group_alive():
                return True
            self.signal(signum)
            if signum == signal.SIGTERM:
                self.signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not self.group_alive():
                    return True
                time.sleep(0.05)
        self._take_terminal_back()
        return not self.group_alive()


def exit_code(returncode: int) -> int:
    """A shell's exit status for a subprocess-style return code (128+N for signal N)."""
    return returncode if returncode >= 0 else 128 - returncode
