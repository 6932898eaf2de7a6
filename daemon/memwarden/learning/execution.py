"""One run, start to end: curate → lease → dry run → run → (preempted | resumed after a crash | finished).

The state machine, recorded in the run's row (runs.py):
- curating: the first time, the memories become files and a JobSpec (preparation.py);
- waiting: the lease was refused; the next tick relaunches the run. Past `learning.gpu_wait` (gpu_wait.py) it
  is blocked (alerted), or with `learning.cpu_fallback` it runs on the CPU, niced, if host RAM has room; with
  `learning.cpu_to_gpu`, at each checkpoint of a CPU run the lease is asked for again, and once granted the
  trainer checkpoints and stops and the run resumes from that checkpoint on the GPU;
- running: under the lease (if any), a dry run of `dry_run_steps` once, then the real run, each a Job of the
  executor (executor.py);
- preempted: the trainer checkpointed and exited 75; the run resumes from the checkpoint when relaunched;
- interrupted: the daemon is stopping (or the task was cancelled); it resumes after the restart;
- a crash resumes from the last checkpoint, up to MAX_ATTEMPTS times, then the run is failed with the trainer's
  own error line;
- a trainer an earlier daemon started is re-attached to if it runs, and its exit taken as if watched if it
  ended unwatched (reattach.py): a finished run is judged, a failed one counts as an attempt;
- done: `finish` (publisher.py) judges, promotes and exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from memwarden.alerts.model import Condition
from memwarden.config.schema import Config
from memwarden.learning import augment, gpu_wait, leasing, reattach
from memwarden.learning.executor import Executor, JobRequest
from memwarden.learning.jobspec import EXIT_DONE, EXIT_PREEMPTED, JobSpec
from memwarden.learning.leasing import Granted, Refused, TrainingLeases
from memwarden.learning.preparation import phase_spec, prepare
from memwarden.learning.progress import CurrentRun
from memwarden.learning.runs import RunStore
from memwarden.learning.store import MemoryStore
from memwarden.learning.systemd_executor import EXIT_OOM_KILLED
from memwarden.learning.versions import VersionStore
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient
from memwarden.snapshots import HostSnapshot

log = get_logger()

MAX_ATTEMPTS = 3  # crashes (not preemptions) of the trainer before a run is failed
DRY_FAILED = -1000  # a failed dry run's exit, offset so that it never reads as a real run's code
# trainer events worth a log line
LOGGED_EVENTS = ("start", "clamp", "oom_retry", "preempted", "error", "checkpoint", "recall", "stage")
ERROR_TAIL = 800  # characters of the trainer's log quoted when it died without an error line

Finish = Callable[[str, str, Path], Awaitable[bool]]  # (run, adapter, run dir) → promoted


def halved_batch(spec: JobSpec) -> JobSpec:
    h = spec.hyper
    micro = max(1, h.micro_batch // 2)
    return dataclasses.replace(spec, hyper=dataclasses.replace(h, micro_batch=micro,
                                                               grad_accum=h.micro_batch * h.grad_accum // micro))


class RunExecution:
    def __init__(self, config: Config, runs: RunStore, store: MemoryStore, versions: VersionStore,
                 leases: TrainingLeases, executor: Executor, finish: Finish, runs_dir: Path, gpu_backend: str,
                 clock: Callable[[], float], monotonic: Callable[[], float] = time.monotonic,
                 ollama: OllamaClient | None = None):
        self.config = config
        self.runs = runs
        self.store = store
        self.versions = versions
        self.leases = leases
        self.executor = executor
        self.finish = finish
        self.runs_dir = runs_dir
        self.gpu_backend = gpu_backend
        self.clock = clock
        self.monotonic = monotonic
        self.ollama = ollama  # the served model writes training pairs through it (learning.augment)
        self.host: Callable[[], HostSnapshot | None] = lambda: None  # the last host reading (services.py sets it)
        self.waits: dict[str, gpu_wait.GpuWait] = {}  # run → its wait for a lease, since the first refusal
        self.wait_decisions: dict[str, gpu_wait.WaitDecision] = {}  # run → the latest decision on that wait
        self.handover: Granted | None = None  # the lease a CPU run moves to the GPU under, once its trainer stops
        self._moving: asyncio.Task | None = None
        self.current: CurrentRun | None = None
        self.failed: dict[str, Condition] = {}  # adapter → its last failed run, until a run of it promotes
        self.closing = False
        self._opened: asyncio.Task | None = None

    def begin_open(self) -> asyncio.Task:
        """Start stopping the trainers a daemon that died left behind (once); the task that does it."""
        if self._opened is None:
            self._opened = asyncio.get_running_loop().create_task(self.executor.stop_orphans(), name="orphans")
        return self._opened

    async def open(self) -> None:
        """Once, before the first job: the orphans are stopped (they checkpoint) before their runs resume."""
        await asyncio.shield(self.begin_open())

    async def execute(self, run_id: str) -> None:
        """Run `run_id` as far as it goes now; whatever happens, the row says where it stands."""
        adapter = self.runs.get(run_id)["adapter"]
        self.current = CurrentRun(run_id, adapter)
        try:
            await self.open()
            await self._run(run_id, adapter)
        except asyncio.CancelledError:
            self.runs.set_state(run_id, "interrupted")
            raise
        except Exception as exc:
            log.exception("training run failed", run=run_id, adapter=adapter)
            self.fail(run_id, adapter, f"{type(exc).__name__}: {exc}")
        finally:
            self.current = None

    async def augmented(self, run_id: str, adapter: str) -> dict[int, tuple[tuple[str, str], ...]]:
        """With learning.augment = "ollama", pairs the served model wrote about the adapter's new memories."""
        cfg = self.config.learning
        if cfg.augment != "ollama" or self.ollama is None:
            return {}
        new = [m for m in self.store.for_adapter(adapter, consolidated=False) if m.get("superseded_by") is None]
        result = await augment.ask(self.ollama.chat, cfg.ollama_base, new)
        log.info("augmented", run=run_id, adapter=adapter, model=cfg.ollama_base, **result.summary())
        return dict(result.pairs)

    def fail(self, run_id: str, adapter: str, error: str) -> None:
        # The alert first: on a full disk the write below fails too, and the run must not fail silently.
        self.failed[adapter] = Condition("training.failed", adapter, "warning",
                                         f"training run {run_id} of {adapter} failed: {error}",
                                         MappingProxyType({"run": run_id, "error": error}))
        try:
            self.runs.set_state(run_id, "failed", error=error, finished_at=self.clock())
        except sqlite3.Error as exc:  # the run stays "running" in the table: a restart resumes it
            log.error("could not record the failed run", run=run_id, error=str(exc))

    async def _run(self, run_id: str, adapter: str) -> None:
        row = self.runs.get(run_id)
        out = self.runs_dir / run_id
        if row["spec_path"]:
            spec = JobSpec.read(Path(row["spec_path"]))
        else:
            self.runs.set_state(run_id, "curating")
            spec = prepare(self.config, self.store, self.runs, self.versions, run_id, adapter, out,
                           leasing.device(self.config, self.gpu_backend), await self.augmented(run_id, adapter))
        attempts = 0
        on_cpu = False
        gpu_spec = spec
        while True:
            remote = getattr(self.executor, "remote", False)  # a cluster node's GPU is not this host's to lease
            lease = leasing.NotNeeded() if on_cpu or remote else await self.leases.acquire(run_id, adapter)
            if on_cpu and self.handover is not None:  # the CPU trainer stopped at its checkpoint: on to the GPU
                lease, self.handover, on_cpu, spec = self.handover, None, False, gpu_spec
                if self.current is not None:
                    self.current.cpu_fallback = False
                log.info("training run resumes on the GPU from its checkpoint", run=run_id, adapter=adapter,
                         lease=lease.id, gpu=lease.gpu)
            if isinstance(lease, Refused):
                if self.runs.state(run_id) == "cancelled":
                    self.end_wait(run_id)
                    return  # cancelled by an operator while it asked for the lease
                weighed = self.weigh_wait(run_id, adapter, lease)
                if weighed.action != "cpu":
                    self.runs.set_state(run_id, "waiting")
                    return  # the next tick tries again
                on_cpu = True
                h = spec.hyper  # a spec resumed after an out-of-memory retry may be below the configured batch
                micro = min(h.micro_batch, weighed.micro_batch or h.micro_batch)
                hyper = dataclasses.replace(h, micro_batch=micro, grad_accum=h.micro_batch * h.grad_accum // micro)
                spec = dataclasses.replace(spec, device="cpu", nice=gpu_wait.CPU_NICE,
                                           cpu_threads=gpu_wait.cpu_threads(), hyper=hyper)
                lease = leasing.NotNeeded()
                if self.current is not None:
                    self.current.cpu_fallback = True
            self.end_wait(run_id)
            self.runs.set_state(run_id, "running", started_at=row["started_at"] or self.clock())
            code = None
            try:
                code = await self._phases(run_id, out, spec, lease if isinstance(lease, Granted) else None)
            finally:
                await self.leases.release(lease)
                await self._end_move(keep=on_cpu and code == EXIT_PREEMPTED)
            if self.closing:
                self.runs.set_state(run_id, "interrupted")
                return  # the daemon is stopping: the run resumes from its checkpoint after the restart
            if code == EXIT_DONE:
                break
            if self.current is not None and self.current.cancelling:
                self.runs.set_state(run_id, "cancelled", finished_at=self.clock())
                log.info("training run cancelled by an operator; its checkpoint is kept", run=run_id,
                         adapter=adapter, code=code)
                return
            if code == EXIT_PREEMPTED and on_cpu and self.handover is not None:
                continue
            if code == EXIT_PREEMPTED:
                self.runs.set_state(run_id, "preempted")
                log.info("training run preempted; it resumes from its checkpoint when the GPU is free",
                         run=run_id, adapter=adapter)
                return
            if code == EXIT_OOM_KILLED and spec.hyper.micro_batch > 1:
                spec = halved_batch(spec)  # killed at its MemoryMax: the same effective batch in smaller pieces
                gpu_spec = spec if not on_cpu else gpu_spec
                self._on_event({"event": "oom_retry", "killed": True, "micro_batch": spec.hyper.micro_batch,
                                "grad_accum": spec.hyper.grad_accum})
            attempts += 1
            log.warning("trainer exited abnormally; resuming from the last checkpoint", run=run_id, code=code,
                        attempt=attempts, of=MAX_ATTEMPTS)
            if attempts >= MAX_ATTEMPTS:
                raise RuntimeError(f"trainer failed {attempts} times (last exit {code}): {self._why(out)}")
        if await self.finish(run_id, adapter, out):
            self.failed.pop(adapter, None)

    def weigh_wait(self, run_id: str, adapter: str, refused: Refused) -> gpu_wait.WaitDecision:
        """The refused run's wait decided (gpu_wait.py) and logged whenever its action changes."""
        now = self.monotonic()
        previous = self.waits.get(run_id)
        wait = gpu_wait.GpuWait(run_id, adapter, previous.since if previous else now, refused.reason, refused.holders)
        self.waits[run_id] = wait
        # A CPU run holds about what its lease would: the weights as the method loads them, with activations.
        decision = gpu_wait.decide(wait, now, self.config, self.host(), leasing.lease_size(self.config))
        last = self.wait_decisions.get(run_id)
        if last is None or (last.action, last.reason) != (decision.action, decision.reason):
            log.info(f"decision: training run {decision.action}", **decision.log_fields(),
                     dry_run=self.config.daemon.dry_run)
        self.wait_decisions[run_id] = decision
        return decision

    def end_wait(self, run_id: str) -> None:
        """The run got its lease, went to the CPU, or is cancelled: its wait (and its alert) ends."""
        self.waits.pop(run_id, None)
        self.wait_decisions.pop(run_id, None)

    def waiting(self) -> list[gpu_wait.WaitDecision]:
        """The decisions on the runs still waiting for the GPU, oldest wait first."""
        out = []
        for run_id, decision in list(self.wait_decisions.items()):
            try:
                state = self.runs.state(run_id)
            except Exception:  # noqa: BLE001 - a run row gone or unreadable: no wait to show
                state = None
            if state == "waiting":
                out.append(decision)
        return out

    async def _move_to_gpu(self, run_id: str, adapter: str) -> None:
        """A CPU run at a checkpoint: if the lease is granted now, the trainer stops (it checkpoints first) and
        the run resumes under that lease."""
        lease = await self.leases.acquire(run_id, adapter)
        cur = self.current
        if not isinstance(lease, Granted):
            return
        if cur is None or cur.run_id != run_id or cur.job is None or cur.cancelling or self.closing:
            await self.leases.release(lease)
            return
        self.handover = lease
        log.info("decision: a CPU run moves to the GPU at its checkpoint", decision="training.cpu_to_gpu",
                 run=run_id, adapter=adapter, lease=lease.id, gpu=lease.gpu, step=(cur.last or {}).get("step"))
        cur.job.preempt()

    async def _end_move(self, keep: bool) -> None:
        """After a phase: a move still asking for its lease stops; a granted one is kept only for the CPU run
        it was granted to (`keep`), and only while nothing else ended that run."""
        if self._moving is not None and not self._moving.done():
            self._moving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._moving
        self._moving = None
        cur = self.current
        if self.handover is not None and not (keep and not self.closing and cur is not None and not cur.cancelling):
            await self.leases.release(self.handover)
            self.handover = None

    def _why(self, out: Path) -> str:
        """The trainer's own error line, else its log's tail: on a full disk the log (beside the run) holds a
        torn traceback at best."""
        last = (self.current.last if self.current else None) or {}
        said = last.get("message") if last.get("event") == "error" else None
        if said:
            return said
        log_file = out / "trainer.log"
        return log_file.read_text(errors="replace")[-ERROR_TAIL:].strip() if log_file.exists() else ""

    async def _phases(self, run_id: str, out: Path, spec: JobSpec, lease: Granted | None) -> int:
        """The dry run (once per run: a marker file remembers it passed), then the real run."""
        dry_marker = out / "dry_run.ok"
        if spec.dry_run_steps and not dry_marker.exists():
            code = await self._train(run_id, out, spec, lease, dry=True)
            if code != EXIT_DONE:  # preempted or killed at its MemoryMax: the run's own answers apply
                return code if code in (EXIT_PREEMPTED, EXIT_OOM_KILLED) else DRY_FAILED - abs(code)
            dry_marker.touch()
            shutil.rmtree(out / "dry", ignore_errors=True)
        return await self._train(run_id, out, spec, lease, dry=False)

    async def _train(self, run_id: str, out: Path, spec: JobSpec, lease: Granted | None, dry: bool) -> int:
        sim = self.config.gpu.sim_file if self.gpu_backend == "sim" else None
        phase = phase_spec(spec, out, dry, lease, sim)
        current = self.current
        assert current is not None
        current.new_phase()
        # The run's size as its lease is sized (weights as the method loads them, with activations) caps its RAM.
        request = JobRequest(phase.spec, phase.spec_file, out, lease.gpu if lease else None,
                             ram_bytes=leasing.lease_size(self.config))
        # A trainer left by an earlier daemon is re-attached to, or its exit taken; never started twice.
        found = reattach.Found(reattach.DRY if dry else reattach.RUN, await self.executor.find(request),
                               not dry and reattach.adapter_home(out, run_id))
        decision = reattach.decide(found)
        if found.anything:
            log.info(f"decision: the trainer {decision.action}", run=run_id, **decision.log_fields())
        if decision.action == reattach.TAKE and decision.code is not None:
            await self.executor.forget(request)
            if decision.code != EXIT_DONE:  # the run's failure reason is its trainer's exit, as if watched
                self._on_event({"event": "error", "message": decision.reason})
            return decision.code
        job = ((await self.executor.adopt(request, self._on_event) if decision.action == reattach.WATCH else None)
               or await self.executor.start(request, self._on_event))
        current.job, current.lease = job, lease
        self._record_placement(run_id, job)
        watcher = (asyncio.get_running_loop().create_task(self.leases.watch_preemption(lease, job.preempt))
                   if lease else None)
        try:
            code = await job.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
        self._record_placement(run_id, job)
        log.info("trainer exited", run=run_id, code=code, dry_run=dry,
                 last_event=(job.last_event or {}).get("event"))
        return code

    def _record_placement(self, run_id: str, job: Any) -> None:
        """Where the run's trainer runs, for `train history`: the executor, and the cluster node once placed."""
        where = job.placement
        fields = {"executor": where.executor, **({"node": where.node} if where.node else {})}
        try:
            self.runs.update(run_id, **fields)
        except sqlite3.Error as exc:
            log.warning("could not record where the run ran", run=run_id, error=str(exc))

    def _on_event(self, event: dict[str, Any]) -> None:
        cur = self.current
        if cur is None:
            return
        cur.record(event)
        kind = event.get("event")
        if (kind == "checkpoint" and cur.cpu_fallback and self.config.learning.cpu_to_gpu and self.handover is None
                and (self._moving is None or self._moving.done())):
            self._moving = asyncio.get_running_loop().create_task(self._move_to_gpu(cur.run_id, cur.adapter),
                                                                  name=f"cpu-to-gpu-{cur.run_id}")
        if kind in LOGGED_EVENTS:
            if kind == "preempted" and cur.cancelling:
                kind = "stopped for a cancel"  # the trainer cannot tell a cancel from a preemption; the log can
            fields = {k: v for k, v in event.items() if k not in ("event", "run", "run_id", "adapter", "level")}
            log.info(f"trainer: {kind}", run=cur.run_id, adapter=cur.adapter, **fields)
