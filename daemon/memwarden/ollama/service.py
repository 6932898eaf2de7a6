"""Last resort: stop and start Ollama itself, as a systemd unit or a Docker container (ollama.service)."""

from __future__ import annotations

import asyncio

from memwarden.logs import get_logger

log = get_logger()


class ServiceError(Exception):
    pass


class ServiceControl:
    def __init__(self, service: str, docker_url: str = "unix:///var/run/docker.sock", timeout: float = 60.0):
        self.service = service
        self.kind = "systemd" if service.endswith(".service") else "container"
        self.docker_url = docker_url
        self.timeout = timeout

    def __str__(self) -> str:
        return f"{self.kind} {self.service}"

    async def _systemctl(self, verb: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "systemctl", verb, self.service, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            raise ServiceError(f"systemctl {verb} {self.service} timed out after {self.timeout:g}s") from None
        if proc.returncode != 0:
            raise ServiceError(f"systemctl {verb} {self.service} failed: {err.decode(errors='replace').strip()}")

    def _docker(self, verb: str) -> None:
        from memwarden.containers.engine import connect  # Docker only when a container is configured

        client = connect(self.docker_url, self.timeout)
        try:
            if verb == "stop":
                client.api.stop(self.service, timeout=int(min(self.timeout, 30)))
            else:
                client.api.start(self.service)
        except Exception as exc:  # noqa: BLE001 - the engine's error, or the SDK's for an ssh:// engine
            raise ServiceError(f"docker {verb} {self.service} failed: {exc}") from None
        finally:
            client.close()

    async def run(self, verb: str) -> None:
        if self.kind == "systemd":
            await self._systemctl(verb)
        else:
            await asyncio.get_running_loop().run_in_executor(None, self._docker, verb)
        log.warning(f"Ollama {verb}ped as a last resort" if verb == "stop" else "Ollama started again",
                    service=self.service, kind=self.kind)

    async def stop(self) -> None:
        await self.run("stop")

    async def start(self) -> None:
        await self.run("start")
