"""Per-container watch: samples at every leak scale, verdicts, and the remediation ladder carried out.

The daemon calls `act()` once per sample pass with a fresh ContainersSnapshot. Verdicts come from the pure
policies (policies/leak_scales.py, policies/remediation.py); this class keeps their inputs (a series per
container downsampled per scale, bounded whatever its span; the restart history in SQLite), logs each decision
with them, and restarts containers through the Docker API when a decision says so — or only logs it under
daemon.dry_run.

Each series is kept in SQLite too (containers/leak_store.py), so a daemon restart or upgrade resumes it where it
was: a container's history is saved every SAVE_EVERY passes, at once when a leak verdict starts or ends, and at
shutdown; the save is small (bounded whatever the span) and spread over the passes, a few containers a pass, so
no pass waits on one large write. A container's history is loaded when the watch first sees it (the same id,
the same leak settings) and deleted when it is gone, restarted or its clock stepped back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from memwarden.alerts.model import Condition
from memwarden.config.schema import Config
from memwarden.containers.history import RestartHistory
from memwarden.containers.leak_store import BadLeakRow, LeakStore
from memwarden.containers.serving import ServingCounter, ServingUrls
from memwarden.logs import get_logger
from memwarden.policies import leak, leak_scales, remediation
from memwarden.snapshots import ContainerMemory, ContainersSnapshot
from memwarden.units import DAY, HOUR, format_duration, format_size

log = get_logger()

# Passes between two saves of a container's leak history: at the default 2-s interval, a crash (no shutdown
# save) loses at most a minute of samples, and each pass writes about len(containers) / SAVE_EVERY histories.
SAVE_EVERY = 30

@dataclass
class Series:
    container_id: str
    history: leak_scales.LeakHistory
    verdict: leak.LeakVerdict | None = None
    idle_leak: bool = False
    models_loaded: int | None = None
    withheld: tuple[str | None, str] | None = None  # (problem, why) of the last restart held back: logged once
    saved: int = 0  # the pass that last saved its history (containers/leak_store.py)


class ContainerWatch:
    def __init__(self, config: Config, db: Any, restart: Callable[[str, float], None],
                 clock: Callable[[], float] = time.time, serving: ServingCounter | None = None):
        self.config = config
        self.history = RestartHistory(db)
        self.leaks = LeakStore(db)
        self.passes = 0
        self._restart = restart  # blocking: docker restart (id, stop timeout)
        self.serving = serving or ServingCounter()  # models loaded in each serving container (it reads them)
        self.clock = clock
        self.series: dict[str, Series] = {}
        self.last: ContainersSnapshot | None = None
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    def _record(self, c: ContainerMemory, now: float) -> Series:
        s = self.series.get(c.name)
        if s is None:
            s = self.series[c.name] = self._resume(c)
        elif s.container_id != c.id:
            self._forget(c.name)
            s = self.series[c.name] = Series(c.id, self._history(), saved=self.passes)  # recreated: new series
        if s.history.last is not None and now < s.history.last.t:
            # The wall clock stepped back: times that run backwards have no slope (nor a span that ever reaches
            # a scale), so start over, warming up again, rather than fit across the step.
            self._forget(c.name)
            s.history, s.verdict = self._history(), None
        s.history.add(leak.Sample(now, c.working_set))
        return s

    def _resume(self, c: ContainerMemory) -> Series:
        """The container's series as a previous daemon left it in SQLite, or a new one."""
        cfg = self.config.containers
        try:
            saved = self.leaks.load(c.name, c.id, leak_scales.LeakSettings.of(cfg.leak_window, cfg.leak_min_rate))
        except (BadLeakRow, sqlite3.Error) as exc:
            log.warning("leak history not resumed", container=c.name, error=str(exc))
            self._forget(c.name)
            saved = None
        if saved is None:
            return Series(c.id, self._history(), saved=self.passes)
        history, verdict = saved
        log.info("leak history resumed", container=c.name, samples=history.count, verdict=verdict and verdict.verdict)
        return Series(c.id, history, verdict, saved=self.passes)

    def _forget(self, name: str) -> None:
        with contextlib.suppress(sqlite3.Error):  # logged by the next save that fails, if the disk stays bad
            self.leaks.remove(name)

    def _save(self, name: str, s: Series, now: float) -> None:
        s.saved = self.passes
        try:
            self.leaks.save(name, s.container_id, s.history, s.verdict, now)
        except sqlite3.Error as exc:  # a full or locked disk: the series goes on in memory, saved again later
            log.warning("leak history not saved", container=name, error=str(exc))

    def _save_due(self, now: float) -> None:
        """The histories saved longest ago, SAVE_EVERY passes or more: a share of the containers each pass."""
        due = sorted((s.saved, name) for name, s in self.series.items() if self.passes - s.saved >= SAVE_EVERY)
        for _, name in due[:math.ceil(len(self.series) / SAVE_EVERY)]:
            self._save(name, self.series[name], now)

    def _history(self) -> leak_scales.LeakHistory:
        cfg = self.config.containers
        return leak_scales.LeakHistory(leak_scales.LeakSettings.of(cfg.leak_window, cfg.leak_min_rate))

    async def act(self, snap: ContainersSnapshot, host_available: int | None) -> list[Condition]:
        cfg = self.config.containers
        now = snap.taken_at
        self.last = snap
        self.passes += 1
        present = {c.name for c in snap.containers} | snap.unread
        if self.passes == 1:
            with contextlib.suppress(sqlite3.Error):  # gone while the daemon was not running
                self.leaks.keep_only(present)
        for gone in set(self.series) - present:
            del self.series[gone]
            self._forget(gone)
        conditions: list[Condition] = []
        urls = ServingUrls(self.config.ollama.url, cfg.ollama_urls)
        loaded = await self.serving.count(snap.containers, urls, self.config.ollama.timeout)
        for c, models in zip(snap.containers, loaded, strict=True):
            s = self._record(c, now)
            before = s.verdict
            previous = before.verdict if before else None
            s.verdict = leak_scales.verdict_of(s.history, before, c.limit, host_available)
            if s.verdict.leaking != (before is not None and before.leaking):
                self._save(c.name, s, now)  # the hysteresis' state, at once
            s.models_loaded = models
            s.idle_leak = leak.idle_leak(c.working_set, models, cfg.idle_leak_threshold)
            inputs = self._inputs(c, s)
            if s.verdict.verdict != previous and s.verdict.verdict != "warming":
                # steady ↔ sawtooth flips as drops enter and leave the window: worth a debug line, no more.
                benign = {s.verdict.verdict, previous} <= {"steady", "sawtooth"}
                (log.debug if benign else log.info)(
                    "decision: container verdict", decision="container.verdict", container=c.name,
                    verdict=s.verdict.verdict, previous=previous, **inputs)
            action, complaint = remediation.container_action(c.label("memwarden.action"), cfg.action)
            if complaint:
                log.warning("bad container label", container=c.name, problem=complaint)
            problem = self._problem(c, s)
            decision = await self._remediate(c, s, problem, action, inputs, now)
            if problem is not None and action != "ignore":
                conditions.append(self._condition(c, s, problem, inputs, decision))
        self._save_due(now)
        await self._verify(snap, now)
        conditions += [cond for c in snap.containers if (cond := self._ineffective(c, now)) is not None]
        return conditions

    def _problem(self, c: ContainerMemory, s: Series) -> str | None:
        if s.verdict is not None and s.verdict.leaking:
            return "leak"
        if s.idle_leak:
            return "idle leak"
        return None

    def _inputs(self, c: ContainerMemory, s: Series) -> dict[str, Any]:
        v = s.verdict
        assert v is not None
        return {"working_set": c.working_set, "limit": c.limit, "slope_bps": round(v.slope, 1),
                "window_s": self.config.containers.leak_window, "scale_s": v.scale,
                "growth_bytes": round(v.growth), "noise_bytes": round(v.noise),
                "samples": v.samples, "span_s": round(v.span, 1),
                "exhaustion_in_s": None if v.exhaustion_in is None else round(v.exhaustion_in),
                "exhaustion_of": v.exhaustion_of, "models_loaded": s.models_loaded,
                "min_rate_bps": round(self.config.containers.leak_min_rate, 1)}

    def _condition(self, c: ContainerMemory, s: Series, problem: str, inputs: dict[str, Any],
                   decision: remediation.Decision | None = None) -> Condition:
        v = s.verdict
        assert v is not None
        # An alert says why a due restart is held back (budget spent, cooling down): it must read differently
        # when memwarden is about to restart the container and when it has given up on it for now.
        withheld = ""
        if decision is not None and decision.withheld:
            withheld = "; no restart: " + decision.withheld_text()
            inputs = {**inputs, "remediation": decision.text()}
        limit = format_size(c.limit) if c.limit else "no memory limit"
        if problem == "leak":
            eta = "" if v.exhaustion_in is None else (
                f"; {'its limit' if v.exhaustion_of == 'limit' else 'host RAM'} exhausted in "
                f"~{format_duration(v.exhaustion_in)}")
            scale = "" if v.scale is None else f" over {format_duration(v.scale)}"
            message = (f"container {c.name} leaking {format_size(v.slope * 60)}/min{scale} "
                       f"(working set {format_size(c.working_set)}, {limit}){eta}{withheld}")
            critical = v.exhaustion_in is not None and v.exhaustion_in < HOUR
            return Condition("container.leak", c.name, "critical" if critical else "warning", message,
                             MappingProxyType(inputs))
        message = (f"container {c.name} holds {format_size(c.working_set)} with no model loaded "
                   f"({limit}){withheld}")
        return Condition("container.idle_leak", c.name, "warning", message, MappingProxyType(inputs))

    async def _remediate(self, c: ContainerMemory, s: Series, problem: str | None, action: str,
                         inputs: dict[str, Any], now: float) -> remediation.Decision | None:
        if problem is None or c.name in self._busy:
            return None
        cfg = self.config.containers
        history = self.history.of(c.name, now - DAY, include_failed=True)
        decision = remediation.decide(problem, action, history, now, cfg.max_restarts_per_hour,
                                      cfg.restart_cooldown, dry_run=self.config.daemon.dry_run)
        if decision.action != "restart":
            withheld = (decision.problem, decision.why) if decision.withheld else None
            if withheld is not None and withheld != s.withheld:  # logged once per reason, not every pass
                log.info("decision: restart withheld", decision="container.withheld", container=c.name,
                         dry_run=self.config.daemon.dry_run, **decision.log_fields(), **inputs)
            s.withheld = withheld
            return decision
        s.withheld = None
        # In the background: a graceful stop can take stop_timeout, and the pass (alerts first) must go on.
        self._busy.add(c.name)
        task = asyncio.get_running_loop().create_task(self._restart_quietly(c, decision.text(), inputs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return decision

    async def _restart_quietly(self, c: ContainerMemory, reason: str, inputs: dict[str, Any]) -> None:
        try:
            with contextlib.suppress(Exception):  # restart() logged and recorded the failure
                await self.restart(c, reason, inputs)
        finally:
            self._busy.discard(c.name)

    async def restart(self, c: ContainerMemory, reason: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restart a container (gracefully), record it, and schedule the check that it helped."""
        dry = self.config.daemon.dry_run
        now = self.clock()
        log.warning("decision: restart container", decision="container.restart", container=c.name, reason=reason,
                    dry_run=dry, stop_timeout_s=self.config.containers.stop_timeout, **(inputs or {}))
        if dry:
            row = self.history.add(c.name, c.id, now, reason, c.working_set, True)
            return {"container": c.name, "restarted": False, "dry_run": True, "id": row}
        self._busy.add(c.name)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self._restart, c.id, self.config.containers.stop_timeout)
        except Exception as exc:
            # Recorded, logged and re-raised to the caller (the pass logs it); never fatal to the daemon.
            log.error("container restart failed", container=c.name, error=repr(exc))
            self.history.add(c.name, c.id, now, reason, c.working_set, False, error=repr(exc))
            raise
        finally:
            self._busy.discard(c.name)
        row = self.history.add(c.name, c.id, now, reason, c.working_set, False)
        self.series.pop(c.name, None)  # a new process: its growth starts from scratch
        self._forget(c.name)
        return {"container": c.name, "restarted": True, "dry_run": False, "id": row}

    async def _verify(self, snap: ContainersSnapshot, now: float) -> None:
        by_name = {c.name: c for c in snap.containers}
        for row in self.history.pending():
            if now - row["at"] < self.config.containers.verify_after:
                continue
            c = by_name.get(row["container"])
            if c is None:
                continue  # not running (yet): check again next pass
            ok = remediation.effective(row["working_set_before"], c.working_set)
            self.history.verify(row["id"], c.working_set, ok)
            log.info("restart verified" if ok else "restart did not help", container=c.name,
                     working_set_before=row["working_set_before"], working_set_after=c.working_set, effective=ok)

    def _ineffective(self, c: ContainerMemory, now: float) -> Condition | None:
        """An alert while the container's last restart, within the hour, did not bring its memory down."""
        history = self.history.of(c.name, now - HOUR)
        last = history[-1] if history else None
        if last is None or last.effective is not False:
            return None
        return Condition("container.restart_ineffective", c.name, "warning",
                         f"restarting {c.name} did not help: working set {format_size(last.working_set_before)} "
                         f"before, {format_size(last.working_set_after or 0)} after",
                         MappingProxyType({"working_set_before": last.working_set_before,
                                           "working_set_after": last.working_set_after, "restarted_at": last.at}))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        restarts = self.history.counts(self.clock() - DAY)
        for c in self.last.containers if self.last else ():
            s = self.series.get(c.name)
            v = s.verdict if s else None
            action, _ = remediation.container_action(c.label("memwarden.action"), self.config.containers.action)
            out.append({
                "name": c.name, "id": c.id[:12], "image": c.image, "compose_service": c.compose_service,
                "working_set": c.working_set, "usage": c.usage, "rss": c.rss, "limit": c.limit,
                "no_limit": c.limit == 0, "restart_count": c.restart_count, "action": action,
                "restarts_24h": restarts.get(c.name, (0, 0))[0], "restarts": restarts.get(c.name, (0, 0))[1],
                "verdict": "idle leak" if s and s.idle_leak else (v.verdict if v else "warming"),
                "slope_bps": None if v is None else v.slope,
                "scale_s": None if v is None else v.scale,
                "exhaustion_in_s": None if v is None else v.exhaustion_in,
                "exhaustion_of": None if v is None else v.exhaustion_of,
                "models_loaded": s.models_loaded if s else None,
                "source": c.source})
        return out

    async def close(self) -> None:
        """Cancel restarts under way; save every history, so the next daemon resumes where this one stopped."""
        for task in list(self._tasks):
            task.cancel()
        now = self.clock()
        for name, s in self.series.items():
            self._save(name, s, now)
