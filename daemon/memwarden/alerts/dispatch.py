"""The alert effector: applies a reconcile result, records history, logs to the journal, feeds the sinks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from types import MappingProxyType

from memwarden.alerts.history import AlertHistory
from memwarden.alerts.hold import hold
from memwarden.alerts.model import ActiveAlert, AlertEvent, Condition, EventType, reconcile
from memwarden.alerts.sinks.exec_hook import ExecSink
from memwarden.alerts.sinks.queued import QueuedSink
from memwarden.alerts.sinks.webhook import WebhookSink
from memwarden.config.redact import redact_text
from memwarden.config.schema import AlertsConfig
from memwarden.logs import get_logger
from memwarden.logs.journald import message_id

log = get_logger()

# An active alert logs at its severity's priority; a resolved one at "notice".
RESOLVED_PRIORITY = 5
RESERVED_FIELDS = {"event", "level", "priority", "message_id", "timestamp"}
# A wall-clock jump larger than this between two updates (beyond what the monotonic clock saw) is a step. NTP
# slews by at most 500 ppm; anything near a second between two sample passes was set, not slewed.
CLOCK_STEP = 1.0


def build_sinks(cfg: AlertsConfig) -> list[QueuedSink]:
    sinks: list[QueuedSink] = []
    if cfg.webhook:
        sinks.append(WebhookSink(cfg.webhook, cfg.webhook_timeout, cfg.webhook_retries))
    if cfg.exec is not None:
        sinks.append(ExecSink(cfg.exec, cfg.exec_timeout))
    return sinks


def _redacted(c: Condition) -> Condition:
    """An alert is read by every socket user, the webhook, the exec hook and the history: a URL's credentials
    quoted in its message or fields (an unreachable Ollama at user:password@…) never go with it."""
    if "://" not in c.message and not any(isinstance(v, str) and "://" in v for v in c.fields.values()):
        return c
    return replace(c, message=redact_text(c.message), fields=MappingProxyType(
        {k: redact_text(v) if isinstance(v, str) else v for k, v in c.fields.items()}))


class AlertDispatcher:
    def __init__(self, history: AlertHistory, cfg: AlertsConfig, mono: Callable[[], float] = time.monotonic):
        self.history = history
        self.mono = mono
        self._clock_at: tuple[float, float] | None = None  # (wall, monotonic) at the last update
        self.cfg = cfg
        self.sinks = build_sinks(cfg)
        self.on_record_error: Callable[[Exception], object] | None = None  # the daemon's StateHealth hook
        self.active: dict[tuple[str, str], ActiveAlert] = {
            a.condition.ident: a for a in history.open_alerts()}
        self.raised: dict[tuple[str, str], int] = {}  # (kind, severity) → alerts raised since start (metrics)
        self.holding: dict[tuple[str, str], float] = {}  # conditions within their alerts.hold (alerts/hold.py)

    async def reconfigure(self, cfg: AlertsConfig) -> None:
        if cfg == self.cfg:
            return
        for sink in self.sinks:
            await sink.drain(2.0)
            await sink.close()
        self.cfg = cfg
        self.sinks = build_sinks(cfg)

    def update(self, scope: str, conditions: Iterable[Condition], now: float) -> list[AlertEvent]:
        self._follow_clock_step(now)
        conditions, self.holding = hold(self.active, [_redacted(c) for c in conditions], scope, self.mono(),
                                        self.cfg.hold.of, self.holding)
        self.active, events = reconcile(self.active, conditions, scope, now, self.cfg.renotify_interval)
        for event in events:
            self.emit(event)
        return events

    def _follow_clock_step(self, now: float) -> None:
        """Renotify intervals are real time, but alerts carry wall-clock times (they are shown and kept). When
        the wall clock steps (NTP, `date -s`, a restored VM), shift each active alert's last notification by the
        step: a step forward must not renotify every alert at once, a step back must not silence them for as
        long as the step."""
        mono = self.mono()
        if self._clock_at is not None:
            step = (now - self._clock_at[0]) - (mono - self._clock_at[1])
            if abs(step) > CLOCK_STEP and self.active:
                self.active = {ident: replace(a, last_notified_at=a.last_notified_at + step)
                               for ident, a in self.active.items()}
                log.warning("wall clock stepped; renotify times moved with it", step_s=round(step, 3),
                            active=len(self.active))
        self._clock_at = (now, mono)

    def emit(self, event: AlertEvent) -> None:
        c = event.alert.condition
        if event.type is EventType.RAISED:
            self.raised[c.kind, c.severity] = self.raised.get((c.kind, c.severity), 0) + 1
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
            if self.on_record_error is not None:
                self.on_record_error(exc)
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
