"""The learning supervisor: from due memories to a promoted, exported adapter version.

One run at a time. A run is: curate the adapter's unconsolidated memories (curator.py) into train, holdout and
probe files; take a preemptible VRAM lease when it trains on a GPU (or the sim GPU); run the trainer subprocess
(process.py) — first a short dry run, then the real one — reading its progress; on exit 75 (preempted) release
the lease and resume later from the checkpoint; on a crash resume up to MAX_ATTEMPTS times; on success judge
(promotion.py) and, in ONE transaction, record the version, the promoted run and the consolidated memories;
then export the adapter to Ollama. The run's state lives in the `runs` table, so a daemon restart resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from memwarden.alerts.model import Condition
from memwarden.config.schema import Config
from memwarden.gpu import simfile
from memwarden.learning import curator, health, promotion, trigger
from memwarden.learning.jobspec import EXIT_DONE, EXIT_PREEMPTED, Ewc, Hyper, JobSpec
from memwarden.learning.process import TrainerProcess
from memwarden.learning.store import MemoryStore
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient, OllamaError
from memwarden.units import format_size

log = get_logger()

MAX_ATTEMPTS = 3  # crashes (not preemptions) of the trainer before a run is failed
RESUMABLE = ("queued", "curating", "waiting", "running", "preempted", "interrupted")
FINAL = ("promoted", "rejected", "failed", "cancelled")
GiB = 1024**3
METHOD_FACTOR = {"lora": 1.2, "qlora": 0.45, "full": 4.0}  # VRAM per byte of base weights, with activations


def last_run_times(db: Any) -> dict[str, float]:
    """adapter → when its most recent run started (or was created, if it never started)."""
    return {r["adapter"]: r["t"] for r in db.query(
        "SELECT adapter, MAX(COALESCE(started_at, created_at)) AS t FROM runs GROUP BY adapter")}


def active_run_adapters(db: Any) -> set[str]:
    """Adapters with a run queued, waiting, preempted or in progress: any run not finished."""
    return {r["adapter"] for r in db.query("SELECT DISTINCT adapter FROM runs WHERE finished_at IS NULL")}


def ollama_name(adapter: str) -> str:
    """An Ollama model name for an adapter (lower case; '@' of profile-qualified adapters becomes '-')."""
    return "memwarden/" + re.sub(r"[^a-z0-9._-]+", "-", adapter.lower()).strip("-.")


class LearningSupervisor:
    def __init__(self, config: Config, db: Any, store: MemoryStore, arbiter: Any, ollama: OllamaClient | None,
                 state_dir: Path, gpu_backend: str, clock: Callable[[], float] = time.time):
        self.config = config
        self.db = db
        self.store = store
        self.arbiter = arbiter
        self.ollama = ollama
        self.runs_dir = state_dir / "runs"
        self.versions_dir = state_dir / "adapters"
        self.gpu_backend = gpu_backend
        self.clock = clock
        self.current: dict[str, Any] | None = None  # {run_id, adapter, trainer, lease, steps, last}
        self.task: asyncio.Task | None = None
        self._failed: dict[str, Condition] = {}
        self._window_logged: set[str] = set()
        self._waiting_reason: dict[str, str] = {}
        self._closing = False
        for row in self.db.query(f"SELECT id FROM runs WHERE state IN ({', '.join('?' * 2)})", ["running", "curating"]):
            self._set(row["id"], state="interrupted")  # the daemon died mid-run: resume from the checkpoint
        self._kill_orphans()

    # ---- the runs table --------------------------------------------------------------------------------

    def _set(self, run_id: str, **fields: Any) -> None:
        self.db["runs"].update(run_id, fields)

    def run(self, run_id: str) -> dict[str, Any]:
        return self.db["runs"].get(run_id)

    def history(self, limit: int = 20, adapter: str | None = None) -> list[dict[str, Any]]:
        where, params = ("WHERE adapter = ?", [adapter]) if adapter else ("", [])
        rows = list(self.db.query(f"SELECT * FROM runs {where} ORDER BY created_at DESC LIMIT ?", [*params, limit]))
        for r in rows:
            r["eval"] = json.loads(r["eval"]) if r["eval"] else None
            r["memory_ids"] = len(json.loads(r["memory_ids"])) if r["memory_ids"] else 0
        return rows

    def status(self) -> dict[str, Any]:
        cur = self.current
        due = self.due(self.clock())
        return {
            "enabled": self.config.learning.enabled,
            "current": None if cur is None else {
                "run_id": cur["run_id"], "adapter": cur["adapter"], "state": self.run(cur["run_id"])["state"],
                "lease": cur.get("lease"), "last": cur.get("last"), "steps_seen": len(cur["steps"]),
                "trainer_pid": cur["trainer"].pid if cur.get("trainer") else None},
            "pending": [r["id"] for r in self.db.query(
                "SELECT id FROM runs WHERE state IN ('queued', 'waiting', 'preempted', 'interrupted') "
                "ORDER BY created_at")],
            "due": [d.to_dict() for d in due],
            "versions": list(self.db.query(
                "SELECT adapter, version, run_id, active, ollama_model, created_at FROM adapter_versions "
                "ORDER BY adapter, version")),
        }

    def conditions(self) -> list[Condition]:
        cur = self.current
        out = health.assess(cur["adapter"], cur["steps"]) if cur else []
        return out + list(self._failed.values())

    # ---- triggering ------------------------------------------------------------------------------------

    def due(self, now: float) -> list[trigger.Decision]:
        sums = {a: v["importance"] for a, v in self.store.unconsolidated_importance().items()}
        return trigger.due_adapters(sums, last_run_times(self.db), active_run_adapters(self.db),
                                    self.config.learning, now)

    async def tick(self) -> None:
        """Called every sample pass: resume a pending run, or start one for a due adapter in its window."""
        cfg = self.config.learning
        if not cfg.enabled or self._closing or (self.task is not None and not self.task.done()):
            return
        pending = list(self.db.query(
            "SELECT id FROM runs WHERE state IN ('queued', 'waiting', 'preempted', 'interrupted') "
            "ORDER BY created_at LIMIT 1"))
        if pending:
            self._launch(pending[0]["id"])
            return
        now = self.clock()
        for decision in self.due(now):
            if not decision.due:
                continue
            opens = trigger.next_window_start(cfg.window, now)
            if opens > now:
                if decision.adapter not in self._window_logged:
                    log.info("decision: run due, waiting for the window", window=cfg.window, opens_in_s=opens - now,
                             **decision.log_fields())
                    self._window_logged.add(decision.adapter)
                continue
            self._window_logged.discard(decision.adapter)
            log.info("decision: run due", **decision.log_fields())
            self.start(decision.adapter, "threshold")
            return

    def start(self, adapter: str, trigger_name: str = "manual") -> dict[str, Any]:
        """Queue a run of `adapter` now (the trigger and window are for automatic runs)."""
        if self.task is not None and not self.task.done():
            raise RuntimeError(f"a run is in progress ({self.current['run_id'] if self.current else '?'}); "
                               "one at a time")
        if not self.config.learning.base_model:
            raise RuntimeError("learning.base_model is not set")
        profiles = {r["profile"] for r in self.db.query(
            "SELECT DISTINCT profile FROM memories WHERE adapter = ?", [adapter])}
        if not profiles:
            raise RuntimeError(f"no memories feed adapter {adapter!r} (see `memwardenctl memories count`)")
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
        self.db["runs"].insert({"id": run_id, "adapter": adapter, "profile": profiles.pop(), "state": "queued",
                                "trigger": trigger_name, "created_at": self.clock(),
                                "method": self.config.learning.method, "promoted": 0})
        self._launch(run_id)
        return self.run(run_id)

    def _launch(self, run_id: str) -> None:
        self.task = asyncio.get_running_loop().create_task(self._guarded(run_id), name=f"run-{run_id}")

    async def _guarded(self, run_id: str) -> None:
        adapter = self.run(run_id)["adapter"]
        self.current = {"run_id": run_id, "adapter": adapter, "steps": [], "last": None}
        try:
            await self._run(run_id)
        except asyncio.CancelledError:
            self._set(run_id, state="interrupted")
            raise
        except Exception as exc:
            log.exception("training run failed", run=run_id, adapter=adapter)
            self._fail(run_id, adapter, f"{type(exc).__name__}: {exc}")
        finally:
            self.current = None

    def _fail(self, run_id: str, adapter: str, error: str) -> None:
        # The alert first: on a full disk the write below fails too, and the run must not fail silently.
        self._failed[adapter] = Condition("training.failed", adapter, "warning",
                                          f"training run {run_id} of {adapter} failed: {error}",
                                          MappingProxyType({"run": run_id, "error": error}))
        try:
            self._set(run_id, state="failed", error=error, finished_at=self.clock())
        except sqlite3.Error as exc:  # the run stays "running" in the table: a restart resumes it
            log.error("could not record the failed run", run=run_id, error=str(exc))

    # ---- one run -------------------------------------------------------------------------------------

    async def _run(self, run_id: str) -> None:
        row = self.run(run_id)
        adapter = row["adapter"]
        out = self.runs_dir / run_id
        if not row["spec_path"]:
            self._set(run_id, state="curating")
            self._curate(run_id, adapter, out)
            row = self.run(run_id)
        spec = JobSpec.read(Path(row["spec_path"]))
        attempts = 0
        while True:
            lease = await self._lease(run_id, adapter)
            if lease is False:
                self._set(run_id, state="waiting")
                return  # the next tick tries again
            self._set(run_id, state="running", started_at=row["started_at"] or self.clock())
            try:
                dry_marker = out / "dry_run.ok"
                if spec.dry_run_steps and not dry_marker.exists():
                    code = await self._train(run_id, out, spec, lease, dry=True)
                    if code == EXIT_DONE:
                        dry_marker.touch()
                        shutil.rmtree(out / "dry", ignore_errors=True)
                    else:
                        code = code if code == EXIT_PREEMPTED else -1000 - abs(code)
                if spec.dry_run_steps == 0 or dry_marker.exists():
                    code = await self._train(run_id, out, spec, lease, dry=False)
            finally:
                if lease:
                    with contextlib.suppress(Exception):
                        await self.arbiter.release(lease["id"], "training run ended")
            if self._closing:
                self._set(run_id, state="interrupted")
                return  # the daemon is stopping: the run resumes from its checkpoint after the restart
            if code == EXIT_DONE:
                break
            if code == EXIT_PREEMPTED:
                self._set(run_id, state="preempted")
                log.info("training run preempted; it resumes from its checkpoint when the GPU is free",
                         run=run_id, adapter=adapter)
                return
            attempts += 1
            log.warning("trainer exited abnormally; resuming from the last checkpoint", run=run_id, code=code,
                        attempt=attempts, of=MAX_ATTEMPTS)
            if attempts >= MAX_ATTEMPTS:
                # The trainer's own error line, else its log's tail: on a full disk the log (beside the run) holds
                # a torn traceback at best.
                last = (self.current or {}).get("last") or {}
                said = last.get("message") if last.get("event") == "error" else None
                log_file = out / "trainer.log"
                tail = log_file.read_text(errors="replace")[-800:] if log_file.exists() and not said else ""
                raise RuntimeError(f"trainer failed {attempts} times (last exit {code}): {said or tail.strip()}")
        await self._finish(run_id, adapter, out)

    def _curate(self, run_id: str, adapter: str, out: Path) -> None:
        cfg = self.config.learning
        new = self.store.for_adapter(adapter, consolidated=False)
        previous = self.store.for_adapter(adapter, consolidated=True)
        cur = curator.curate(new, previous, dual=cfg.dual, max_samples=cfg.max_samples,
                             holdout_fraction=cfg.holdout_fraction, replay_fraction=cfg.replay_fraction,
                             seed=cfg.seed)
        if not cur.train:
            raise RuntimeError(f"no training pairs for {adapter}: {cur.summary()}")
        out.mkdir(parents=True, exist_ok=True)
        curator.write_jsonl(out / "train.jsonl", cur.train)
        curator.write_jsonl(out / "holdout.jsonl", cur.holdout or cur.train[:1])
        probe = None
        if cur.probe:
            curator.write_jsonl(out / "probe.jsonl", cur.probe)
            probe = str(out / "probe.jsonl")
        active = self._active_version(adapter)
        prior_fisher = Path(active["path"]) / "fisher.safetensors" if active else None
        spec = JobSpec(
            run_id=run_id, adapter=adapter, base_model=cfg.base_model, method=cfg.method, output_dir=str(out),
            train_file=str(out / "train.jsonl"), holdout_file=str(out / "holdout.jsonl"), probe_file=probe,
            init_adapter=active["path"] if active and cfg.method != "full" else None,
            hyper=Hyper(lr=cfg.lr, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, micro_batch=cfg.micro_batch,
                        grad_accum=cfg.grad_accum, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
                        max_seq_len=cfg.max_seq_len, seed=cfg.seed),
            ewc=Ewc(lam=cfg.ewc_lambda, prior_fisher=str(prior_fisher) if prior_fisher and prior_fisher.exists()
                    else None),
            device=self._device(), checkpoint_every_steps=cfg.checkpoint_steps,
            checkpoint_every_seconds=cfg.checkpoint_interval, dry_run_steps=cfg.dry_run_steps)
        spec.write(out / "job.json")
        self._set(run_id, spec_path=str(out / "job.json"), output_dir=str(out),
                  memory_ids=json.dumps(cur.consolidate_ids), reason=json.dumps(cur.summary()))
        log.info("curated", run=run_id, adapter=adapter, **{k: v for k, v in cur.summary().items()
                                                              if k not in ("adapter",)})

    def _device(self) -> str:
        d = self.config.learning.device
        if d != "auto":
            return d
        return "cuda" if self.gpu_backend == "nvml" else "cpu"

    def _lease_size(self) -> int:
        cfg = self.config.learning
        if cfg.lease_size:
            return cfg.lease_size
        weights = sum(p.stat().st_size for p in Path(cfg.base_model).glob("*.safetensors"))
        return int(weights * METHOD_FACTOR[cfg.method]) + GiB

    async def _lease(self, run_id: str, adapter: str) -> dict[str, Any] | bool | None:
        """A preemptible lease for a GPU run (the sim GPU too: it trains on the CPU but arbitrates as on a
        GPU); None when none is needed; False when refused for now."""
        if self.config.learning.device == "cpu" or self.gpu_backend not in ("nvml", "sim"):
            return None
        try:
            return await self.arbiter.acquire(self._lease_size(), f"training {adapter} ({run_id})", os.getpid(),
                                              preemptible=True)
        except Exception as exc:  # noqa: BLE001 - ArbiterError: no room now; retried on the next pass
            if self._waiting_reason.get(run_id) != str(exc):
                log.info("training waits for VRAM", run=run_id, reason=str(exc))
                self._waiting_reason[run_id] = str(exc)
            return False

    async def _train(self, run_id: str, out: Path, spec: JobSpec, lease: dict[str, Any] | None, dry: bool) -> int:
        if dry:
            spec = JobSpec.from_dict({**json.loads(spec.to_json()), "output_dir": str(out / "dry"),
                                      "dry_run_steps": spec.dry_run_steps})
            (out / "dry").mkdir(parents=True, exist_ok=True)
            spec.write(out / "dry.json")
            path = out / "dry.json"
        else:
            spec = JobSpec.from_dict({**json.loads(spec.to_json()), "dry_run_steps": 0})
            spec.write(out / "job.run.json")
            path = out / "job.run.json"
        assert self.current is not None
        self.current["steps"] = []
        self.current["start"] = None  # the trainer's start event: how many steps this phase runs (metrics)
        env = {"CUDA_VISIBLE_DEVICES": str(lease["gpu"])} if lease else {"CUDA_VISIBLE_DEVICES": ""}
        proc = TrainerProcess(path, out / "trainer.log", self._on_event, env=env)
        await proc.start()
        self.current["trainer"] = proc
        self.current["lease"] = lease
        (out / "trainer.pid").write_text(str(proc.pid))
        sim = self.config.gpu.sim_file if self.gpu_backend == "sim" else None
        if lease and sim is not None and proc.pid is not None:
            simfile.book(sim, lease["gpu"], proc.pid, lease["size"])  # what the trainer would hold on a GPU
        watcher = (asyncio.get_running_loop().create_task(self._watch_preemption(lease["id"], proc))
                   if lease else None)
        try:
            code = await proc.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            (out / "trainer.pid").unlink(missing_ok=True)
        log.info("trainer exited", run=run_id, code=code, dry_run=dry,
                 last_event=(proc.last_event or {}).get("event"))
        return code

    async def _watch_preemption(self, lease_id: str, proc: TrainerProcess) -> None:
        while True:
            state = (await self.arbiter.watch(lease_id, 3600))["state"]
            if state != "active":
                log.info("lease preempted; asking the trainer to checkpoint and exit", lease=lease_id)
                proc.preempt()
                return

    def _on_event(self, event: dict[str, Any]) -> None:
        cur = self.current
        if cur is None:
            return
        cur["last"] = event
        kind = event.get("event")
        if kind == "step":
            cur["steps"].append(event)
        elif kind == "start":
            cur["start"] = event
        elif kind in ("clamp", "oom_retry", "preempted", "error", "checkpoint"):
            fields = {k: v for k, v in event.items() if k not in ("event", "run", "run_id", "adapter", "level")}
            log.info(f"trainer: {kind}", run=cur["run_id"], adapter=cur["adapter"], **fields)

    # ---- promotion and export ------------------------------------------------------------------------------

    def _active_version(self, adapter: str) -> dict[str, Any] | None:
        rows = list(self.db.query(
            "SELECT * FROM adapter_versions WHERE adapter = ? AND active = 1", [adapter]))
        return rows[0] if rows else None

    async def _finish(self, run_id: str, adapter: str, out: Path) -> None:
        report = json.loads((out / "eval.json").read_text())
        ev = {**report.get("eval", {}), **{k: report[k] for k in ("tokens_per_s", "step", "fisher_combined_with_prior")
                                           if k in report}}
        verdict = promotion.judge(ev, self.config.learning.forgetting_epsilon)
        log.info("decision: promote" if verdict.promote else "decision: keep the current version",
                 decision="learning.promote", run=run_id, adapter=adapter, promote=verdict.promote,
                 reason=verdict.reason, epsilon=self.config.learning.forgetting_epsilon,
                 **{k: v for k, v in ev.items() if k.endswith("_loss_before") or k.endswith("_loss_after")})
        now = self.clock()
        if not verdict.promote:
            self._set(run_id, state="rejected", eval=json.dumps(ev), reason=verdict.reason, finished_at=now)
            return
        version = 1 + (self.db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM adapter_versions WHERE adapter = ?", [adapter]).fetchone()[0])
        target = self.versions_dir / adapter / f"v{version}"
        staging = target.with_name(f".v{version}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(out / "final", staging)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # a disk full mid-copy: give back what the copy took
            raise
        if target.exists():  # left by a promotion whose transaction never committed
            shutil.rmtree(target)
        staging.replace(target)
        ids = json.loads(self.run(run_id)["memory_ids"] or "[]")
        with self.db.atomic():
            self.db.execute("UPDATE adapter_versions SET active = 0 WHERE adapter = ?", [adapter])
            self.db["adapter_versions"].insert({"adapter": adapter, "version": version, "run_id": run_id,
                                                "path": str(target), "created_at": now, "active": 1})
            self._set(run_id, state="promoted", promoted=1, version=version, eval=json.dumps(ev),
                      reason=verdict.reason, finished_at=now)
            marked = self.store.mark_consolidated(ids, run_id, now, conn=self.db)
        self._failed.pop(adapter, None)
        log.info("adapter version promoted", adapter=adapter, version=version, run=run_id, consolidated=marked,
                 path=str(target))
        await self._export(adapter, version, target)
        self._prune(adapter)

    async def _export(self, adapter: str, version: int, path: Path) -> None:
        base = self.config.learning.ollama_base
        if self.ollama is None or not base or self.config.learning.method == "full":
            return
        from memwarden.learning.adapter_check import check_adapter

        problems = check_adapter(path, Path(self.config.learning.base_model)).problems
        if problems:
            log.warning("adapter not exported: Ollama cannot take it", adapter=adapter, version=version,
                        problems=problems)
            return
        name = ollama_name(adapter)
        try:
            files = {f.name: await self.ollama.push_blob(f) for f in sorted(path.iterdir())
                     if f.name in ("adapter_model.safetensors", "adapter_config.json")}
            await self.ollama.create(f"{name}:v{version}", base, files)
            await self.ollama.copy(f"{name}:v{version}", f"{name}:latest")
        except OllamaError as exc:
            log.error("adapter export to Ollama failed", adapter=adapter, version=version, error=str(exc))
            return
        self.db.execute("UPDATE adapter_versions SET ollama_model = ? WHERE adapter = ? AND version = ?",
                        [f"{name}:v{version}", adapter, version])
        log.info("adapter exported to Ollama", adapter=adapter, model=f"{name}:v{version}", alias=f"{name}:latest",
                 size=format_size(sum(f.stat().st_size for f in path.iterdir())))

    def _prune(self, adapter: str) -> None:
        keep = self.config.learning.keep_versions
        old = list(self.db.query(
            "SELECT version, path FROM adapter_versions WHERE adapter = ? AND active = 0 ORDER BY version DESC "
            "LIMIT -1 OFFSET ?", [adapter, max(0, keep - 1)]))
        for row in old:
            shutil.rmtree(row["path"], ignore_errors=True)
            self.db.execute("DELETE FROM adapter_versions WHERE adapter = ? AND version = ?", [adapter, row["version"]])

    async def rollback(self, adapter: str) -> dict[str, Any]:
        """Make the version before the active one active again (and Ollama's alias point at it)."""
        active = self._active_version(adapter)
        if active is None:
            raise RuntimeError(f"{adapter} has no active version")
        prev = list(self.db.query("SELECT * FROM adapter_versions WHERE adapter = ? AND version < ? "
                                  "ORDER BY version DESC LIMIT 1", [adapter, active["version"]]))
        if not prev:
            raise RuntimeError(f"{adapter} v{active['version']} is its first version; nothing to roll back to")
        with self.db.atomic():
            self.db.execute("UPDATE adapter_versions SET active = 0 WHERE adapter = ?", [adapter])
            self.db.execute("UPDATE adapter_versions SET active = 1 WHERE adapter = ? AND version = ?",
                            [adapter, prev[0]["version"]])
        if self.ollama is not None and prev[0]["ollama_model"]:
            try:
                await self.ollama.copy(prev[0]["ollama_model"], f"{ollama_name(adapter)}:latest")
            except OllamaError as exc:
                log.error("could not point the Ollama alias back", adapter=adapter, error=str(exc))
        log.info("adapter rolled back", adapter=adapter, from_version=active["version"], to=prev[0]["version"])
        return {"adapter": adapter, "active": prev[0]["version"], "was": active["version"]}

    async def cancel(self, adapter: str) -> dict[str, Any]:
        cur = self.current
        if cur is None or cur["adapter"] != adapter:
            raise RuntimeError(f"no run of {adapter} in progress")
        trainer = cur.get("trainer")
        if trainer is not None:
            trainer.preempt()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.task), 60)
        self._set(cur["run_id"], state="cancelled", finished_at=self.clock())
        return self.run(cur["run_id"])

    # ---- shutdown and restart ------------------------------------------------------------------------------

    def _kill_orphans(self) -> None:
        """A trainer left running by a daemon that died: stop it (it checkpoints on SIGTERM) before resuming."""
        for pidfile in self.runs_dir.glob("*/trainer.pid") if self.runs_dir.exists() else ():
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text())
                if simfile.pid_alive(pid):
                    os.kill(pid, signal.SIGTERM)
                    deadline = time.monotonic() + 30
                    while simfile.pid_alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.1)
                    if simfile.pid_alive(pid):
                        os.kill(pid, signal.SIGKILL)
                pidfile.unlink(missing_ok=True)

    async def close(self) -> None:
        self._closing = True
        cur = self.current
        if cur is not None and cur.get("trainer") is not None:
            cur["trainer"].preempt()  # checkpoint now; the run resumes after the restart
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.task), 30) if self.task else None
        if self.task is not None and not self.task.done():
            self.task.cancel()
