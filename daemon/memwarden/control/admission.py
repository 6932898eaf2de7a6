"""Who may hold one more connection to the control socket: a pure decision over the connections open now.

Three rules, checked in order, so that no user can lock another out:
- `daemon.max_clients` bounds every connection at once;
- `daemon.max_clients_per_user` bounds the connections of one uid (root and the daemon's own user are exempt:
  they are the operators the limits protect, and the service itself);
- `daemon.reserved_clients` of those slots are kept for operators (root, the daemon's user and the admin group):
  everyone else together holds at most max_clients − reserved_clients, so root's `status` always gets in.

Connections that stay open are bounded in time as well (connection.py): one with no request in flight is closed
after `daemon.client_idle_timeout`, and a request line must arrive whole within `daemon.request_read_timeout`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ADMITTED = "admitted"
FULL = "full"
USER_QUOTA = "user_quota"
RESERVED = "reserved"


@dataclass(frozen=True)
class ClientLimits:
    max_clients: int = 512
    per_user: int = 64
    reserved: int = 32
    idle_timeout: float = 120.0
    read_timeout: float = 10.0

    @classmethod
    def of(cls, daemon: Any) -> ClientLimits:
        """The limits of a `[daemon]` config section."""
        return cls(daemon.max_clients, daemon.max_clients_per_user, daemon.reserved_clients,
                   daemon.client_idle_timeout, daemon.request_read_timeout)


@dataclass(frozen=True)
class Caller:
    """What admission needs to know of the caller."""
    uid: int
    operator: bool  # root, the daemon's own user, or the admin group: may use the reserved slots
    exempt: bool  # root or the daemon's own user: no per-user quota


@dataclass(frozen=True)
class Open:
    """The connections open now: in all, per uid, and those of peers who are not operators."""
    total: int
    by_uid: Mapping[int, int]
    others: int


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str
    message: str = ""

    def log_fields(self, peer: Caller, now_open: Open, limits: ClientLimits) -> dict[str, Any]:
        return {"reason": self.reason, "uid": peer.uid, "operator": peer.operator, "open": now_open.total,
                "open_by_uid": now_open.by_uid.get(peer.uid, 0), "open_others": now_open.others,
                "max_clients": limits.max_clients, "max_clients_per_user": limits.per_user,
                "reserved_clients": limits.reserved}


def admit(peer: Caller, now_open: Open, limits: ClientLimits) -> Admission:
    if now_open.total >= limits.max_clients:
        return Admission(False, FULL, f"too many clients: all {limits.max_clients} connections are in use "
                                      "(daemon.max_clients); try again")
    mine = now_open.by_uid.get(peer.uid, 0)
    if not peer.exempt and mine >= limits.per_user:
        return Admission(False, USER_QUOTA, f"too many clients: uid {peer.uid} already holds {mine} connections, "
                                            f"the most one user may (daemon.max_clients_per_user); close some")
    shared = max(0, limits.max_clients - limits.reserved)
    if not peer.operator and now_open.others >= shared:
        return Admission(False, RESERVED, f"too many clients: the other {limits.reserved} connections are kept "
                                          "for root and the admin group (daemon.reserved_clients); try again")
    return Admission(True, ADMITTED)
