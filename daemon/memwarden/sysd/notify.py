"""sd_notify(3): datagrams of KEY=VALUE lines to $NOTIFY_SOCKET, and the watchdog period systemd asked for.

Written here rather than taken from the sdnotify package: that one reads NOTIFY_SOCKET from the process
environment only (tests and embedders cannot inject it), swallows every error and encodes as latin-1, which
loses a non-ASCII STATUS= line. The protocol itself is one sendto().
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from memwarden.logs import get_logger

log = get_logger()


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        # A leading "@" names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) if address else None
        if self._sock is not None:
            # Never block the loop on a receiver that does not read (a stalled PID 1, a test harness):
            # a full queue drops this message, and the next pass sends a fresh one.
            self._sock.setblocking(False)
        self.watchdog_usec = _watchdog_usec(env)
        self._warned = False
        self.dropped = 0

    def send(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except BlockingIOError:
            self.dropped += 1
            if not self._warned:
                log.warning("systemd is not reading notifications; dropping them", notify_socket=self._address)
                self._warned = True
        except OSError as exc:
            if not self._warned:  # systemd gone or socket removed: say so once, keep running
                log.warning("cannot notify systemd", notify_socket=self._address, error=str(exc))
                self._warned = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        if self.watchdog_usec:
            self.send("WATCHDOG=1")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value if value > 0 else None
