"""The container effector: a graceful restart through the Docker API (stop with a time-out, then start)."""

from __future__ import annotations

from collections.abc import Callable


def docker_restarter(docker_url: str) -> Callable[[str, float], None]:
    def restart(container_id: str, stop_timeout: float) -> None:
        from memwarden.containers.engine import connect

        client = connect(docker_url, stop_timeout + 60)
        try:
            client.api.restart(container_id, timeout=int(stop_timeout))
        finally:
            client.close()

    return restart
