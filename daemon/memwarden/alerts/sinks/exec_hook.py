"""Run a program per alert event: MEMWARDEN_ALERT_* variables in its environment, the event as JSON on stdin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from memwarden.alerts.sinks.queued import QueuedSink
from memwarden.logs import get_logger

log = get_logger()


def hook_env(event: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({
        "MEMWARDEN_ALERT_EVENT": event["event"],
        "MEMWARDEN_ALERT_KIND": event["kind"],
        "MEMWARDEN_ALERT_KEY": event["key"],
        "MEMWARDEN_ALERT_SEVERITY": event["severity"],
        "MEMWARDEN_ALERT_MESSAGE": event["message"],
        "MEMWARDEN_ALERT_RAISED_AT": f"{event['raised_at']:.3f}",
        "MEMWARDEN_ALERT_FIELDS": json.dumps(event["fields"], default=str),
    })
    return env


class ExecSink(QueuedSink):
    name = "exec"

    def __init__(self, program: Path, timeout: float):
        super().__init__()
        self.program = program
        self.timeout = timeout

    async def deliver(self, event: dict[str, Any]) -> bool:
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self.program), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=hook_env(event), start_new_session=True)
        except OSError as exc:
            log.warning("alert exec hook could not start", program=str(self.program), error=str(exc))
            return False
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(json.dumps(event).encode()), self.timeout)
        except TimeoutError:
            # The hook leads its own session: kill its children too, or one holding stderr blocks us.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            log.warning("alert exec hook timed out and was killed", program=str(self.program),
                        timeout_s=self.timeout)
            return False
        if proc.returncode != 0:
            log.warning("alert exec hook failed", program=str(self.program), status=proc.returncode,
                        stderr=stderr.decode(errors="replace")[-500:])
            return False
        return True
