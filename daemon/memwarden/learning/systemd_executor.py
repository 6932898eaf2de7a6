"""The systemd executor: each run's trainer is its own unit, `memwarden-train@RUN.service`, outside the daemon.

The template (systemd/memwarden-train@.service) gives the trainer its own cgroup and exec profile: low CPU and
I/O weight, Nice=10, OOMPolicy=stop on the trainer alone, W+X memory and the NVIDIA nodes, loopback only, its
journal lines tagged with the run id. Per run, the executor sets MemoryMax (runtime only) and writes a launch
file (/run/memwarden/train/RUN.json: the job spec, the progress file, the GPU); the unit runs unit_entry.py,
which reads it. Progress is a file in the run's directory, so a restarted daemon re-reads it and re-attaches
to a unit that is still running (`adopt`) instead of stopping it. The launch file stays until a daemon has seen
its unit end: one that ended while no daemon watched is found by `find` (unit_entry's exit record, else
systemd's result) and its exit taken as if watched (reattach.py).

The D-Bus calls sit behind `UnitManager` (systemd_bus.py talks to the system bus with dbus-fast), so everything
here is tested without a bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from memwarden.learning.executor import JobRequest, OnEvent, Placement
from memwarden.learning.jobspec import EXIT_FAILED
from memwarden.learning.reattach import NOTHING, Trace
from memwarden.logs import get_logger

log = get_logger()

TEMPLATE = "memwarden-train@{}.service"
LAUNCH_DIR = Path("/run/memwarden/train")  # the daemon's RuntimeDirectory, kept across its restarts
PROGRESS_FILE = "progress.jsonl"
EXIT_OOM_KILLED = 137  # 128 + SIGKILL: the kernel's OOM killer ended the trainer at its MemoryMax
POLL = 0.5  # seconds between two looks at the unit's state (three D-Bus calls to PID 1)
# Seconds between two reads of the progress file meanwhile (a read of what was appended): once it holds the
# trainer's exit record the unit ends within moments, and the next look need not wait for the whole POLL.
TAIL_POLL = 0.05
MEMORY_FLOOR = 512 * 1024**2  # no trainer is capped below this
HEADROOM = 1.5  # MemoryMax over the run's RAM estimate: the estimate is of the steady state, not its peaks
RUNNING = frozenset({"active", "activating", "reloading", "deactivating"})
# StartUnit returns once the start is queued, while the unit still reads inactive: a started unit that reads
# inactive has ended only once it is seen to have run. One that never runs (and never fails) is given up on after
# this long.
START_TIMEOUT = 300.0


@dataclass(frozen=True)
class UnitState:
    active_state: str  # active, activating, deactivating, inactive, failed
    result: str  # success, exit-code, signal, oom-kill, ...
    main_pid: int
    exec_main_status: int
    started_at: int = 0  # ExecMainStartTimestampMonotonic (µs): when its main process last started; 0: never

    @property
    def running(self) -> bool:
        return self.active_state in RUNNING


class UnitManager(Protocol):
    """What the executor asks of systemd (the memwarden user may do it only to memwarden-train@* units)."""

    async def set_memory_max(self, unit: str, nbytes: int) -> None: ...
    async def start(self, unit: str) -> None: ...
    async def stop(self, unit: str) -> None: ...
    async def kill(self, unit: str, signal: int) -> None: ...
    async def state(self, unit: str) -> UnitState | None: ...  # None: no such unit loaded
    async def reset_failed(self, unit: str) -> None: ...


def unit_name(run_id: str) -> str:
    """The run's instance of the template. Run ids (scheduling.new_run_id) are [A-Za-z0-9_-],
    which need no unit-name escaping."""
    if not run_id or not all(c.isalnum() or c in "-_" for c in run_id):
        raise ValueError(f"run id {run_id!r} cannot name a unit (letters, digits, - and _ only)")
    return TEMPLATE.format(run_id)


def memory_max(mem_total: int, host_reserve: int, ram_estimate: int | None) -> int:
    """The trainer's cgroup cap: never into the host's reserve; within it, the run's estimate with headroom."""
    ceiling = max(MEMORY_FLOOR, mem_total - host_reserve)
    if ram_estimate is None:
        return ceiling
    return min(ceiling, max(MEMORY_FLOOR, int(ram_estimate * HEADROOM)))


def exit_code(state: UnitState, progress_exit: int | None) -> int:
    """The trainer's own exit status where unit_entry recorded it; else what systemd says ended the unit."""
    if progress_exit is not None:
        return progress_exit
    if state.result == "oom-kill":
        return EXIT_OOM_KILLED
    if state.result == "success":
        return state.exec_main_status
    return state.exec_main_status or EXIT_FAILED


class ProgressTail:
    """Reads the progress file from where it left off; events go to the callback, unit_entry's exit record is
    kept aside. A partial last line is read again once it is whole."""

    def __init__(self, path: Path, on_event: OnEvent):
        self.path = path
        self.on_event = on_event
        self.offset = 0
        self.last_event: dict[str, Any] | None = None
        self.exit: int | None = None

    def read(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        for line in whole.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "unit_exit":
                self.exit = int(event.get("code", EXIT_FAILED))
            elif "event" in event:
                self.last_event = event
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("training progress handler failed", event=event.get("event"))


class SystemdJob:
    def __init__(self, manager: UnitManager, unit: str, tail: ProgressTail, gpu: int | None, launch: Path,
                 poll: float = POLL, since: int | None = None):
        """`since`: the unit's started_at before this start (None: adopted, seen running already)."""
        self.manager = manager
        self.since = since
        self.deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        self.never_ran = False
        self.unit = unit
        self.tail = tail
        self.gpu = gpu
        self.launch = launch  # removed once the unit's end is seen: nothing is left for the next daemon to take
        self.poll = poll
        self.main_pid: int | None = None
        self._signals: list[asyncio.Task] = []

    @property
    def placement(self) -> Placement:
        return Placement("systemd", self.main_pid, self.gpu, unit=self.unit, outlives_daemon=True)

    @property
    def last_event(self) -> dict[str, Any] | None:
        return self.tail.last_event

    def preempt(self) -> None:
        """SIGTERM to the trainer alone (checkpoint, exit 75); unit_entry forwards it."""
        self._send(15)

    def cancel(self) -> None:
        self._send(9)

    def _send(self, sig: int) -> None:
        self._signals.append(asyncio.get_running_loop().create_task(self.manager.kill(self.unit, sig)))

    async def _until_next_look(self) -> None:
        """POLL seconds, the progress read meanwhile; once it holds the trainer's exit record, a moment only."""
        if self.tail.exit is not None:
            await asyncio.sleep(min(TAIL_POLL, self.poll))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.poll
        while True:
            await asyncio.sleep(min(TAIL_POLL, self.poll))
            self.tail.read()
            if self.tail.exit is not None or loop.time() >= deadline:
                return

    def _ended(self, state: UnitState | None) -> bool:
        """Unloaded or failed is an end; inactive is one once the unit is known to have run since its start (seen
        running, a later start time, or the trainer's exit record)."""
        if state is not None and (state.running or (self.since is not None and state.started_at > self.since)):
            self.since = None
        if state is None or state.active_state == "failed" or self.since is None or self.tail.exit is not None:
            return state is None or not state.running
        if asyncio.get_running_loop().time() < self.deadline:
            return False
        log.warning("trainer unit never ran after its start", unit=self.unit, waited_s=START_TIMEOUT)
        self.never_ran = True
        return True

    async def wait(self) -> int:
        """Until the unit is no longer running: its progress read as it goes, then its exit status."""
        while True:
            state = await self.manager.state(self.unit)
            self.tail.read()
            if state is not None and state.main_pid:
                self.main_pid = state.main_pid
            if self._ended(state):
                break
            await self._until_next_look()
        for task in self._signals:
            with contextlib.suppress(Exception):
                await task
        code = EXIT_FAILED if self.never_ran else exit_code(state or UnitState("inactive", "success", 0, EXIT_FAILED),
                                                            self.tail.exit)
        if state is not None and state.active_state == "failed":
            await self.manager.reset_failed(self.unit)  # the next phase or retry starts the unit afresh
        self.launch.unlink(missing_ok=True)
        return code


class SystemdExecutor:
    def __init__(self, manager: UnitManager, mem_total: Callable[[], int], host_reserve: int,
                 launch_dir: Path = LAUNCH_DIR, poll: float = POLL):
        self.manager = manager
        self.mem_total = mem_total
        self.host_reserve = host_reserve
        self.launch_dir = launch_dir
        self.poll = poll

    def _launch_file(self, request: JobRequest) -> Path:
        return self.launch_dir / f"{request.spec.run_id}.json"

    def _launch(self, request: JobRequest) -> Path:
        self.launch_dir.mkdir(parents=True, exist_ok=True)
        launch = self._launch_file(request)
        body = {"spec": str(request.spec_file), "progress": str(request.run_dir / PROGRESS_FILE),
                "gpu": request.gpu}
        tmp = launch.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(launch)
        return launch

    async def start(self, request: JobRequest, on_event: OnEvent) -> SystemdJob:
        unit = unit_name(request.spec.run_id)
        request.spec.write(request.spec_file)
        progress = request.run_dir / PROGRESS_FILE
        progress.unlink(missing_ok=True)  # a new phase: the last one's events are not this one's
        launch = self._launch(request)
        cap = memory_max(self.mem_total(), self.host_reserve, request.ram_bytes)
        before = await self.manager.state(unit)
        await self.manager.set_memory_max(unit, cap)
        await self.manager.start(unit)
        log.info("trainer unit started", unit=unit, memory_max=cap, gpu=request.gpu)
        return SystemdJob(self.manager, unit, ProgressTail(progress, on_event), request.gpu, launch, self.poll,
                          since=before.started_at if before is not None else 0)

    async def adopt(self, request: JobRequest, on_event: OnEvent) -> SystemdJob | None:
        """The run's unit still running (a daemon restart): its job, with its progress read from the start of
        the file so the run's record catches up; None when there is none to adopt."""
        unit = unit_name(request.spec.run_id)
        state = await self.manager.state(unit)
        if state is None or not state.running:
            return None
        log.info("trainer unit adopted", unit=unit, pid=state.main_pid)
        job = SystemdJob(self.manager, unit, ProgressTail(request.run_dir / PROGRESS_FILE, on_event), request.gpu,
                         self._launch_file(request), self.poll)
        job.main_pid = state.main_pid
        return job

    async def find(self, request: JobRequest) -> Trace:
        """The unit last launched for this phase and not seen ending: running, or how it ended (unit_entry's
        exit record, else systemd's result while the unit is still loaded)."""
        try:
            launched = json.loads(self._launch_file(request).read_text()).get("spec")
        except (OSError, ValueError, AttributeError):
            return NOTHING
        if launched != str(request.spec_file):
            return NOTHING
        unit = unit_name(request.spec.run_id)
        state = await self.manager.state(unit)
        if state is not None and state.running:
            return Trace("running")
        tail = ProgressTail(request.run_dir / PROGRESS_FILE, lambda _event: None)
        tail.read()
        seen = f"{unit} {state.active_state}, result {state.result}" if state else f"{unit} unloaded"
        if tail.exit is not None:
            return Trace("ended", tail.exit, detail=seen)
        return Trace("ended", exit_code(state, None) if state is not None else None, detail=seen)

    async def forget(self, request: JobRequest) -> None:
        """The phase's last unit is taken care of without being watched: not found again, reset if it failed."""
        self._launch_file(request).unlink(missing_ok=True)
        unit = unit_name(request.spec.run_id)
        state = await self.manager.state(unit)
        if state is not None and state.active_state == "failed":
            await self.manager.reset_failed(unit)

    async def stop_orphans(self) -> None:
        """Nothing to stop: a trainer unit outlives the daemon on purpose and is adopted by its run."""
