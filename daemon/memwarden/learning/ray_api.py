"""The Ray Jobs REST API as the daemon speaks it (aiohttp): the daemon process never imports ray.

Submit (POST /api/jobs/), read (GET /api/jobs/{id}), stop (POST /api/jobs/{id}/stop), follow the log (the
websocket GET /api/jobs/{id}/logs/tail, from the log's first line), and upload a runtime_env package
(PUT /api/packages/gcs/NAME.zip, as JobSubmissionClient does) under a name made of its content hash, so that an
unchanged package is uploaded once.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
TIMEOUT = aiohttp.ClientTimeout(total=60)


class RayApiError(RuntimeError):
    pass


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    node_id: str | None  # the node its entrypoint runs on, once placed
    exit_code: int | None  # the entrypoint's exit status, once it exited by itself
    message: str

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @staticmethod
    def from_json(data: dict[str, Any]) -> JobInfo:
        return JobInfo(data.get("submission_id") or data.get("job_id") or "", str(data.get("status")),
                       data.get("driver_node_id") or None, data.get("driver_exit_code"),
                       (data.get("message") or "")[:2000])


def zip_package(files: Iterable[tuple[str, Path]]) -> tuple[str, bytes]:
    """(gcs URI, zip bytes) of `files` (name in the zip, path), named by the content's hash."""
    buf = io.BytesIO()
    digest = hashlib.sha256()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in sorted(files):
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + data)
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return f"gcs://_ray_pkg_{digest.hexdigest()[:32]}.zip", buf.getvalue()


def tree_files(root: Path, prefix: str) -> list[tuple[str, Path]]:
    """Every file under `root` as (prefix/relative path, path), bytecode caches left out."""
    return [(f"{prefix}/{p.relative_to(root)}" if prefix else str(p.relative_to(root)), p)
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]


class RayJobsApi:
    def __init__(self, address: str):
        self.address = address.rstrip("/")

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
                    session.request(method, self.address + path, **kwargs) as resp:
                text = await resp.text()
                if resp.status == 404:
                    return None
                if resp.status >= 400:
                    raise RayApiError(f"Ray Jobs API {method} {path}: HTTP {resp.status}: {text[:500]}")
                return text
        except aiohttp.ClientError as exc:
            raise RayApiError(f"Ray Jobs API at {self.address} unreachable: {exc}") from exc

    async def upload(self, uri: str, data: bytes) -> None:
        path = "/api/packages/gcs/" + uri.removeprefix("gcs://")
        if await self._request("GET", path) is None:
            await self._request("PUT", path, data=data)

    async def submit(self, submission_id: str, entrypoint: str, runtime_env: dict[str, Any],
                     resources: dict[str, float], num_gpus: float, num_cpus: float) -> str:
        body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env}
        if resources:
            body["entrypoint_resources"] = resources
        if num_gpus:
            body["entrypoint_num_gpus"] = num_gpus
        if num_cpus:
            body["entrypoint_num_cpus"] = num_cpus
        text = await self._request("POST", "/api/jobs/", json=body)
        if text is None:
            raise RayApiError(f"Ray Jobs API at {self.address}: no job submission endpoint")
        return json.loads(text).get("submission_id") or submission_id

    async def info(self, job_id: str) -> JobInfo | None:
        text = await self._request("GET", f"/api/jobs/{job_id}")
        return None if text is None else JobInfo.from_json(json.loads(text))

    async def stop(self, job_id: str) -> None:
        await self._request("POST", f"/api/jobs/{job_id}/stop")

    async def tail(self, job_id: str) -> AsyncIterator[str]:
        """The job's log from its first line, as the lines arrive, until the job ends."""
        url = self.address.replace("http", "ws", 1) + f"/api/jobs/{job_id}/logs/tail"
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        yield msg.data
                    elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                        break
        except aiohttp.ClientError as exc:
            raise RayApiError(f"Ray job log of {job_id} unreadable: {exc}") from exc
