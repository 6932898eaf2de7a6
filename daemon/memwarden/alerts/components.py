"""Which components of the sample pass failed, and why: the `component.failed` alerts.

A component is one step of the pass: a policy with the alerts it feeds (host, gpu), an effector (leases,
containers, learning, metrics), the state check. An exception that escapes one is a bug or an input nobody
foresaw, and it stays local: that component is skipped for this pass, a critical `component.failed` alert
(key: the component) names it and the error, and the rest of the pass, READY and the watchdog go on. The alert
resolves on the first pass in which the component runs to its end again. A component that is not run in a pass
(its probe had nothing new) keeps its state.

Probes keep the same contract in their own words: a probe that raises is *degraded* (probe.degraded,
probes/runner.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from memwarden.alerts.model import Condition
from memwarden.config.redact import redact_text
from memwarden.logs import get_logger

log = get_logger()

KIND = "component.failed"
MAX_ERROR = 300  # characters of the error kept in the alert (the log line has the traceback)


@dataclass(frozen=True)
class Failure:
    component: str
    error: str  # "TypeError: …", secrets redacted
    since: float  # wall time of the first failing pass
    passes: int  # consecutive failing passes


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = redact_text(" ".join(text.split()))
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR] + "…"


class ComponentHealth:
    def __init__(self) -> None:
        self._failures: dict[str, Failure] = {}

    @property
    def failures(self) -> Mapping[str, Failure]:
        return MappingProxyType(self._failures)

    def failed(self, component: str, exc: BaseException, now: float) -> Failure:
        """Record that `component` raised `exc` in this pass; logged (with the traceback) once per new error."""
        error = describe(exc)
        prior = self._failures.get(component)
        if prior is None or prior.error != error:
            log.error("component failed; skipped this pass", component=component, error=error,
                      exc_info=(type(exc), exc, exc.__traceback__))
        failure = Failure(component, error, prior.since if prior else now, (prior.passes if prior else 0) + 1)
        self._failures[component] = failure
        return failure

    def ok(self, component: str) -> None:
        prior = self._failures.pop(component, None)
        if prior is not None:
            log.info("component recovered", component=component, after_error=prior.error,
                     failed_passes=prior.passes)

    def conditions(self) -> list[Condition]:
        return [Condition(KIND, f.component, "critical",
                          f"{f.component} failed and is skipped each pass until it recovers: {f.error}",
                          MappingProxyType({"component": f.component, "error": f.error, "since": f.since,
                                            "failed_passes": f.passes}))
                for f in sorted(self._failures.values(), key=lambda f: f.component)]
