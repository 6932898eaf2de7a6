"""The alert effector: applies a reconcile result, records history, logs to the journal, feeds the sinks."""

from __future__ import annotations

from collections.abc import Iterable

from memwarden.alerts.model import ActiveAlert, AlertEvent, Condition, EventType, reconcile
from memwarden.alerts.sinks.exec_hook import ExecSink
from memwarden.alerts.sinks.queued import QueuedSink
from memwarden.alerts.sinks.webhook import WebhookSink
from memwarden.config.schema import AlertsConfig
from memwarden.logs import get_logger
from memwarden.logs.journald import message_id
from memwarden.state.alert_history import AlertHistory

log = get_logger()

# An active alert logs at its severity's priority; a resolved one at "notice".
RESOLVED_PRIORITY = 5
RESERVED_FIELDS = {"event", "level", "priority", "message_id", "timestamp"}


def build_sinks(cfg: AlertsConfig) -> list[QueuedSink]:
    sinks: list[QueuedSink] = []
    if cfg.webhook:
        sinks.append(WebhookSink(cfg.webhook, cfg.webhook_timeout, cfg.webhook_retries))
    if cfg.exec is not None:
        sinks.append(ExecSink(cfg.exec, cfg.exec_timeout))
    return sinks


class AlertDispatcher:
    def __init__(self, history: AlertHistory, cfg: AlertsConfig):
        self.history = history
        self.cfg = cfg
        self.sinks = build_sinks(cfg)
        self.active: dict[tuple[str, str], ActiveAlert] = {
            a.condition.ident: a for a in history.open_alerts()}

    async def reconfigure(self, cfg: AlertsConfig) -> None:
        if cfg == self.cfg:
            return
        for sink in self.sinks:
            await sink.drain(2.0)
            await sink.close()
        self.cfg = cfg
        self.sinks = build_sinks(cfg)

    def update(self, scope: str, conditions: Iterable[Condition], now: float) -> list[AlertEvent]:
        self.active, events = reconcile(self.active, conditions, scope, now, self.cfg.renotify_interval)
        for event in events:
            self.emit(event)
        return events

    def emit(self, event: AlertEvent) -> None:
        c = event.alert.condition
        verb = {"raised": "alert", "changed": "alert changed", "renotified": "alert still active",
                "resolved": "alert resolved"}[event.type.value]
        fields = {k: v for k, v in c.fields.items() if k not in RESERVED_FIELDS}
        common = dict(message_id=message_id(c.kind), alert_event=event.type.value, alert_kind=c.kind,
                      alert_key=c.key, severity=c.severity, **fields)
        if event.type is EventType.RESOLVED:
            log.info(f"{verb}: {c.message}", priority=RESOLVED_PRIORITY, **common)
        else:
            method = {"critical": log.critical, "warning": log.warning}.get(c.severity, log.info)
            method(f"{verb}: {c.message}", **common)
        try:
            self.history.record(event)
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop alerts from going out
            log.error("could not record alert history", error=str(exc), alert_kind=c.kind)
        payload = event.to_dict()
        for sink in self.sinks:
            sink.submit(payload)

    def active_list(self) -> list[dict]:
        return [{"kind": a.condition.kind, "key": a.condition.key, "severity": a.condition.severity,
                 "message": a.condition.message, "raised_at": a.raised_at,
                 "last_notified_at": a.last_notified_at, "notify_count": a.notify_count,
                 "fields": dict(a.condition.fields)}
                for a in sorted(self.active.values(), key=lambda a: a.raised_at)]

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.drain(3.0)
            await sink.close()
