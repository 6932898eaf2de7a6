"""RayExecutor: a run's phase as a Ray job on a node with `learning.ray_resources`, over the Jobs REST API.

The job's runtime_env carries memwarden (py_modules) and the phase's spec with its input files (working_dir);
the job runs training/ray_entry.py, which keeps the output (checkpoints included) on that node, so a requeued
job resumes from the checkpoint there. Progress is the job's log, followed over its websocket; a preemption or
a cancel stops the job (SIGTERM: the trainer checkpoints and exits 75, given STOP_WAIT before a SIGKILL). The
job id is kept in the run's directory (JOB_FILE): a daemon that restarts re-attaches to the job, and a job
outlives the daemon's own stop. The adapter comes home in the log (ray_entry.py), each file under its sha256 in
the run's `.incoming/`, verified before it is installed as `final/`; a file already home by its hash is not
written again. Where a job ended without an exit of its own (its node died), the run is requeued (exit 75).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import memwarden
from memwarden.config import Config
from memwarden.learning.executor import JobRequest, OnEvent, Placement
from memwarden.learning.jobspec import EXIT_DONE, EXIT_FAILED, EXIT_PREEMPTED, JobSpec
from memwarden.learning.ray_api import JobInfo, RayApiError, RayJobsApi, tree_files, zip_package
from memwarden.learning.reattach import NOTHING, Trace
from memwarden.logs import get_logger

log = get_logger()

JOB_FILE = "ray_job.json"  # {"job_id", "phase"}: the job a restarted daemon re-attaches to
INCOMING = ".incoming"
ENTRYPOINT = "python -m memwarden.training.ray_entry job.json"
STOP_WAIT = 120  # seconds Ray gives a stopped job to checkpoint before its SIGKILL
POLL = 1.0  # seconds between two reads of a remote job's status (a remote API: nothing to await locally)
TAIL_GRACE = 30.0  # seconds the log may still arrive after the job ended
TRAINER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def exit_code(info: JobInfo, said: int | None) -> int:
    """The trainer's exit status as the run reads it. Its own `exit` line first; a stopped job was preempted
    (the trainer checkpointed on its SIGTERM); a job that failed without an exit of its own lost its node or
    supervisor, and is requeued to resume from the checkpoint kept on that node."""
    if said is not None:
        return said
    if info.status == "SUCCEEDED":
        return EXIT_DONE
    if info.status == "FAILED" and info.exit_code is not None:
        return info.exit_code
    return EXIT_PREEMPTED


def split_resources(resources: dict[str, float]) -> tuple[dict[str, float], float, float]:
    """learning.ray_resources as (custom resources, num_gpus, num_cpus) for the job's entrypoint."""
    custom = {k: float(v) for k, v in resources.items() if k not in ("num_gpus", "num_cpus")}
    return custom, float(resources.get("num_gpus", 0)), float(resources.get("num_cpus", 0))


class AdapterReceiver:
    """The adapter's files as they arrive in chunks: each written under its hash, verified, then installed."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.incoming = run_dir / INCOMING
        self.files: list[dict[str, Any]] = []
        self.output_bytes: int | None = None
        self.fetched_bytes = 0

    def manifest(self, event: dict[str, Any]) -> None:
        self.files = [f for f in event.get("files", []) if isinstance(f, dict) and safe_name(f.get("name"))]
        self.output_bytes = event.get("output_bytes")
        self.incoming.mkdir(parents=True, exist_ok=True)

    def _entry(self, name: str) -> dict[str, Any] | None:
        return next((f for f in self.files if f["name"] == name), None)

    def _home(self, entry: dict[str, Any]) -> bool:
        done = self.incoming / entry["sha256"]
        return done.is_file() and done.stat().st_size == entry["size"]

    def chunk(self, event: dict[str, Any]) -> None:
        entry = self._entry(str(event.get("name")))
        if entry is None or self._home(entry):
            return  # not in the manifest, or already home by its hash
        data = base64.b64decode(event["data"])
        part = self.incoming / f"{entry['sha256']}.part"
        with part.open("r+b" if part.exists() else "wb") as f:
            f.seek(int(event["offset"]))
            f.write(data)
        self.fetched_bytes += len(data)
        if part.stat().st_size == entry["size"] and sha256(part) == entry["sha256"]:
            part.replace(self.incoming / entry["sha256"])

    def complete(self) -> bool:
        return bool(self.files) and all(self._home(f) for f in self.files)

    def install(self) -> None:
        """final/ and eval.json in the run's directory, as a local trainer leaves them."""
        final = self.run_dir / "final"
        shutil.rmtree(final, ignore_errors=True)
        for entry in sorted(self.files, key=lambda f: f["name"] == "eval.json"):  # eval.json last: it means done
            target = self.run_dir / entry["name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(self.incoming / entry["sha256"], tmp)
            tmp.replace(target)


def safe_name(name: Any) -> bool:
    return isinstance(name, str) and name != "" and not name.startswith("/") and ".." not in Path(name).parts


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class RayJob:
    def __init__(self, api: RayJobsApi, job_id: str, run_dir: Path, on_event: OnEvent, expect_adapter: bool):
        self.api = api
        self.expect_adapter = expect_adapter  # a real run's job sends its adapter; a dry run's does not
        self.job_id = job_id
        self.run_dir = run_dir
        self.on_event = on_event
        self.node: str | None = None
        self.last_event: dict[str, Any] | None = None
        self.said: int | None = None
        self._exited = asyncio.Event()  # the entry's exit line was read
        self.receiver = AdapterReceiver(run_dir)
        self._lines = 0  # log lines handled: a reconnected tail skips them
        self._partial = ""
        self._stops: list[asyncio.Task] = []
        self._watch = asyncio.get_running_loop().create_task(self._watch_status(), name=f"ray-{job_id}")
        self._tail = asyncio.get_running_loop().create_task(self._follow(), name=f"ray-log-{job_id}")

    @property
    def placement(self) -> Placement:
        # The daemon's stop leaves the job running; the next daemon re-attaches to it by its id.
        return Placement("ray", None, None, node=self.node, job_id=self.job_id, outlives_daemon=True)

    def preempt(self) -> None:
        self._stops.append(asyncio.get_running_loop().create_task(self._stop()))

    cancel = preempt  # a stopped job checkpoints either way; the run's own state tells a cancel apart

    async def _stop(self) -> None:
        try:
            await self.api.stop(self.job_id)
        except RayApiError as exc:
            log.warning("could not stop the Ray job", job=self.job_id, error=str(exc))

    async def _watch_status(self) -> JobInfo:
        missing = 0
        while True:
            try:
                info = await self.api.info(self.job_id)
            except RayApiError as exc:
                log.warning("Ray job status unreadable; retrying", job=self.job_id, error=str(exc))
                info = None
            else:
                missing = missing + 1 if info is None else 0
                if missing >= 3:  # the cluster no longer knows the job (a new head): requeue the run
                    return JobInfo(self.job_id, "FAILED", self.node, None, "job unknown to the Ray cluster")
            if info is not None:
                self.node = info.node_id or self.node
                if info.terminal:
                    return info
            await asyncio.sleep(POLL)

    async def _follow(self, collect_only: bool = False) -> None:
        while True:
            seen = 0
            try:
                async for text in self.api.tail(self.job_id):
                    *lines, self._partial = (self._partial + text).split("\n")
                    for line in lines:
                        seen += 1
                        if seen > self._lines or collect_only:
                            self._lines = max(self._lines, seen)
                            self._line(line, collect_only)
                return
            except RayApiError as exc:
                log.warning("Ray job log interrupted; reconnecting", job=self.job_id, error=str(exc))
                self._partial = ""
                await asyncio.sleep(POLL)

    def _line(self, line: str, collect_only: bool) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # Ray's own lines, or a library printing to stdout
        if not isinstance(event, dict) or "event" not in event:
            return
        kind = event["event"]
        if kind == "adapter_manifest":
            self.receiver.manifest(event)
        elif kind == "adapter_chunk":
            self.receiver.chunk(event)
        elif kind == "exit":
            self.said = int(event.get("code", EXIT_FAILED))
            self._exited.set()
        elif not collect_only:
            self.last_event = event
            try:
                self.on_event(event)
            except Exception:
                log.exception("training progress handler failed", event=kind)

    async def wait(self) -> int:
        """Until the trainer's exit line (the last the entry writes: every chunk before it is in) or the job's
        end, whichever comes first: the status that follows the line adds nothing but delay."""
        exited = asyncio.get_running_loop().create_task(self._exited.wait())
        try:
            await asyncio.wait({self._watch, exited}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the daemon stops: the job runs on, re-attached to by the next daemon
            for task in (self._tail, self._watch, exited):
                task.cancel()
            raise
        exited.cancel()
        if self._watch.done():
            info = self._watch.result()
            # The log lags the status: its exit line (every chunk is before it) or, if the job ended without one,
            # the log's own end.
            exited = asyncio.get_running_loop().create_task(self._exited.wait())
            await asyncio.wait({self._tail, exited}, timeout=TAIL_GRACE, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            self._tail.cancel()
        else:
            self._watch.cancel()
            info = JobInfo(self.job_id, "EXITED", self.node, self.said, "")
            if self.node is None:  # placed and done between two status reads
                with contextlib.suppress(RayApiError):
                    read = await self.api.info(self.job_id)
                    self.node = read.node_id if read else None
        code = exit_code(info, self.said)
        if code == EXIT_DONE and self.expect_adapter and not self.receiver.complete():
            await asyncio.wait_for(self._follow(collect_only=True), TAIL_GRACE)  # the log once more
        if code == EXIT_DONE and self.expect_adapter:
            if not self.receiver.complete():
                log.error("the adapter did not come home whole", job=self.job_id)
                code = EXIT_FAILED
            else:
                self.receiver.install()
                log.info("adapter fetched from the Ray job", job=self.job_id, node=self.node,
                         fetched_bytes=self.receiver.fetched_bytes, output_bytes=self.receiver.output_bytes)
        if code == EXIT_PREEMPTED and self.said is None and info.status == "FAILED":
            log.warning("the Ray job ended without its trainer (its node died?); the run is requeued",
                        job=self.job_id, node=self.node, message=info.message[:300])
        (self.run_dir / JOB_FILE).unlink(missing_ok=True)
        return code


class RayExecutor:
    remote = True  # the trainer runs on a Ray node: no lease on this host's GPU

    def __init__(self, address: str, resources: dict[str, float], device: str, lease_size: int, runs_dir: Path):
        self.api = RayJobsApi(address)
        self.resources = dict(resources)
        self.device = device
        self.lease_size = lease_size
        self.runs_dir = runs_dir
        self._modules: tuple[str, bytes] | None = None

    async def stop_orphans(self) -> None:
        """Nothing to stop: a job left by the last daemon is re-attached to when its run resumes."""

    async def find(self, request: JobRequest) -> Trace:
        """The job the last daemon submitted for this phase, by the id kept in the run's directory: running
        (or waiting for its node), or how it ended. A job that succeeded sends its adapter through its log, which
        is read again by re-attaching to it."""
        record = read_record(request.run_dir)
        if not record or record.get("phase") != request.spec_file.name:
            return NOTHING
        info = await self.api.info(record["job_id"])
        if info is None:
            return NOTHING  # the cluster forgot it (a new head): the phase starts again
        if not info.terminal:
            return Trace("running")
        detail = f"Ray job {info.job_id} {info.status}" + (f": {info.message[:200]}" if info.message else "")
        code = EXIT_DONE if info.status == "SUCCEEDED" else info.exit_code
        return Trace("ended", code, fetchable=not request.spec.dry_run_steps, detail=detail)

    async def forget(self, request: JobRequest) -> None:
        """The phase's last job is taken care of without being watched: not found again."""
        (request.run_dir / JOB_FILE).unlink(missing_ok=True)

    async def adopt(self, request: JobRequest, on_event: OnEvent) -> RayJob | None:
        """The job the last daemon submitted for this phase, still running or succeeded: re-attached to by its id
        (a succeeded job's log is read again for the adapter)."""
        record = read_record(request.run_dir)
        if not record or record.get("phase") != request.spec_file.name:
            return None
        info = await self.api.info(record["job_id"])
        if info is None or (info.terminal and info.status != "SUCCEEDED"):
            return None
        log.info("re-attached to the Ray job", job=info.job_id, status=info.status, node=info.node_id)
        return RayJob(self.api, info.job_id, request.run_dir, on_event, not request.spec.dry_run_steps)

    async def start(self, request: JobRequest, on_event: OnEvent) -> RayJob:
        request.spec.write(request.spec_file)
        phase = request.spec_file.name
        job_id = f"memwarden-{request.spec.run_id}-{uuid.uuid4().hex[:8]}"
        runtime_env = await self._runtime_env(request)
        custom, gpus, cpus = split_resources(self.resources)
        await self.api.submit(job_id, ENTRYPOINT, runtime_env, custom, gpus, cpus)
        tmp = request.run_dir / (JOB_FILE + ".tmp")
        tmp.write_text(json.dumps({"job_id": job_id, "phase": phase}))
        tmp.replace(request.run_dir / JOB_FILE)
        log.info("submitted the Ray job", job=job_id, run=request.spec.run_id, phase=phase, resources=self.resources)
        return RayJob(self.api, job_id, request.run_dir, on_event, not request.spec.dry_run_steps)

    async def _runtime_env(self, request: JobRequest) -> dict[str, Any]:
        shipped, files = ship(request.spec, request.run_dir, self.device)
        staging = request.run_dir / f"{request.spec_file.stem}.ray.json"
        staging.write_text(json.dumps({**shipped, "lease_size": self.lease_size}, indent=1))
        wuri, wdata = zip_package([("job.json", staging), *files])
        await self.api.upload(wuri, wdata)
        if self._modules is None:
            root = Path(memwarden.__file__).parent
            self._modules = await asyncio.to_thread(zip_package, tree_files(root, "memwarden"))
        puri, pdata = self._modules
        await self.api.upload(puri, pdata)
        env = {**TRAINER_ENV, "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT)}
        return {"working_dir": wuri, "py_modules": [puri], "env_vars": env}


def ship(spec: JobSpec, run_dir: Path, device: str) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    """The spec as the job's working directory holds it, and the files that go with it: inputs by name in the
    working directory, the output relative to the node's runs directory, no sim GPU (a daemon-host file)."""
    files: list[tuple[str, Path]] = []
    data = asdict(dataclasses.replace(spec, sim_gpu=None, device=device))
    for key in ("train_file", "holdout_file", "probe_file", "recall_file", "general_file"):
        if data[key]:
            files.append((Path(data[key]).name, Path(data[key])))
            data[key] = Path(data[key]).name
    if data["init_adapter"]:
        files += tree_files(Path(data["init_adapter"]), "init_adapter")
        data["init_adapter"] = "init_adapter"
    if data["ewc"]["prior_fisher"]:
        files.append(("prior_fisher.safetensors", Path(data["ewc"]["prior_fisher"])))
        data["ewc"]["prior_fisher"] = "prior_fisher.safetensors"
    data["output_dir"] = str(Path(spec.output_dir).relative_to(run_dir.parent))
    return data, files


def read_record(run_dir: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((run_dir / JOB_FILE).read_text())
        return record if isinstance(record, dict) and "job_id" in record else None
    return None


def make_executor(config: Config, runs_dir: Path) -> RayExecutor:
    """learning.executor = "ray" (or auto with learning.ray_address set): runs are Ray jobs."""
    from memwarden.learning.executor_choice import ExecutorUnavailable
    from memwarden.learning.leasing import lease_size

    if not config.learning.ray_address:
        raise ExecutorUnavailable("learning.executor: 'ray' needs learning.ray_address (the Ray Jobs API address)")
    return RayExecutor(config.learning.ray_address, config.learning.ray_resources, config.learning.device,
                       lease_size(config), runs_dir)
