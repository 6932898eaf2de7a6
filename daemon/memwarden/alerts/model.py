"""The alert lifecycle as a pure function: conditions seen now + alerts active before → events."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Condition:
    """Something a policy found wrong right now. (kind, key) names it: kind is what (host.ram,
    container.leak), key is where (host, a container name, a GPU index)."""

    kind: str
    key: str
    severity: str
    message: str
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ident(self) -> tuple[str, str]:
        return (self.kind, self.key)


@dataclass(frozen=True)
class ActiveAlert:
    condition: Condition
    raised_at: float
    last_notified_at: float
    notify_count: int = 1


class EventType(StrEnum):
    RAISED = "raised"
    CHANGED = "changed"  # severity moved while active
    RENOTIFIED = "renotified"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class AlertEvent:
    type: EventType
    alert: ActiveAlert
    at: float

    def to_dict(self) -> dict[str, Any]:
        c = self.alert.condition
        return {
            "event": self.type.value, "kind": c.kind, "key": c.key, "severity": c.severity,
            "message": c.message, "fields": json.loads(json.dumps(dict(c.fields), default=str)),
            "raised_at": self.alert.raised_at, "at": self.at, "notify_count": self.alert.notify_count,
        }


def reconcile(
    active: Mapping[tuple[str, str], ActiveAlert],
    conditions: Iterable[Condition],
    scope: str,
    now: float,
    renotify_interval: float,
) -> tuple[dict[tuple[str, str], ActiveAlert], list[AlertEvent]]:
    """One source's conditions against the active alerts it owns (kinds under `scope.`).

    Alerts of other scopes pass through untouched, so each probe's policy resolves only its own.
    """
    seen = {c.ident: c for c in conditions}
    for ident in seen:
        if not ident[0].startswith(scope + "."):
            raise ValueError(f"condition {ident} is outside scope {scope!r}")
    result: dict[tuple[str, str], ActiveAlert] = {}
    events: list[AlertEvent] = []
    for ident, alert in active.items():
        if not ident[0].startswith(scope + ".") or ident in seen:
            result[ident] = alert
        else:
            events.append(AlertEvent(EventType.RESOLVED, alert, now))
    for ident, cond in seen.items():
        prior = result.get(ident)
        if prior is None:
            alert = ActiveAlert(cond, raised_at=now, last_notified_at=now)
            events.append(AlertEvent(EventType.RAISED, alert, now))
        elif prior.condition.severity != cond.severity:
            alert = ActiveAlert(cond, prior.raised_at, now, prior.notify_count + 1)
            events.append(AlertEvent(EventType.CHANGED, alert, now))
        elif now - prior.last_notified_at >= renotify_interval:
            alert = ActiveAlert(cond, prior.raised_at, now, prior.notify_count + 1)
            events.append(AlertEvent(EventType.RENOTIFIED, alert, now))
        else:
            # Keep the newest message and fields (the numbers move) without notifying again.
            alert = replace(prior, condition=cond)
        result[ident] = alert
    return result, events
