"""The daemon's RPC methods. Read methods are open to the socket's group; `admin` ones need SO_PEERCRED
of root, the daemon's own user or the admin group."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from memwarden import __version__
from memwarden.config.redact import redact_config, secret_keys
from memwarden.control.container_methods import register_containers
from memwarden.control.gpu_methods import register_gpu
from memwarden.control.learning_methods import register_learning
from memwarden.control.memory_methods import register_memories
from memwarden.control.protocol import PERMISSION_DENIED, InvalidParams, RpcError
from memwarden.control.registry import Registry
from memwarden.policies import host_trend
from memwarden.policies.host_memory import admittable_bytes, levels
from memwarden.services import Services

# Only the trainer subprocess may import these; the daemon reports if any slipped in (a test reads the list too).
HEAVY_MODULES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "ray", "numpy", "rich")
# Imported only once something needs them: metrics.enabled; the proxy or a webhook; a container restart.
OPTIONAL_MODULES = ("prometheus_client", "aiohttp", "docker")


def _jsonable_config(services: Services, secrets: bool = False) -> dict[str, Any]:
    """The config in effect as JSON; secrets redacted (config/redact.py) unless `secrets`."""
    data = asdict(services.config)
    data.pop("source", None)
    data.pop("given", None)
    shown = {section: {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in values.items()}
             for section, values in data.items()}
    return shown if secrets else redact_config(shown, secret_keys())


def register_all(reg: Registry, s: Services, reload: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
    """Every RPC method, against the daemon's parts; `reload` is the Daemon's (it owns the front doors)."""
    readings = s.readings

    async def status() -> dict[str, Any]:
        """Daemon version, uptime, config, last sample and active alerts."""
        cfg = s.config
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": readings.started_at,
            "uptime_s": round(readings.uptime(), 3),
            "config": str(cfg.source) if cfg.source else None,
            "state_dir": str(cfg.daemon.state_dir),
            "dry_run": cfg.daemon.dry_run,
            "ready": readings.ready,
            "summary": s.status_line(),
            "last_sample": {
                "at": readings.last_at,
                "duration_ms": None if readings.last_ms is None else round(readings.last_ms, 3),
                "count": readings.samples,
                "interval_s": s.effective_interval(),
            },
            "degraded": s.degraded(),
            "last_reload": readings.last_reload,
            "active_alerts": s.dispatcher.active_list(),
        }

    async def host() -> dict[str, Any]:
        """The last host-memory sample, each metric's level and the admission reserve."""
        snap = readings.host
        if snap is None:
            return {"sampled": False, "error": s.degraded().get("host")}
        cfg = s.config.host
        shown = levels(snap, readings.host_state, cfg)
        return {
            "sampled": True,
            **snap.to_dict(),
            "psi_available": snap.pressure is not None,
            "reserve": cfg.reserve,
            "admittable_bytes": admittable_bytes(snap, cfg),
            "levels": {m: {"value": None if x.value is None else round(x.value, 2), "level": x.level.label,
                           "warn": x.warn, "crit": x.crit} for m, x in shown.items()},
            "trend": host_trend.view(readings.host_trend),
        }

    async def alerts(limit: int = 50) -> dict[str, Any]:
        """Active alerts and the most recent ones from history."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise InvalidParams(f"'limit' must be a whole number from 1 to 10000, got {limit!r}")
        return {"active": s.dispatcher.active_list(), "recent": s.dispatcher.history.recent(limit)}

    async def config_show(secrets: bool = False, peer: Any = None) -> dict[str, Any]:
        """The configuration in effect, with defaults filled in and secrets redacted (root: secrets=true shows them)."""
        if not isinstance(secrets, bool):
            raise InvalidParams(f"'secrets' must be true or false, got {secrets!r}")
        if secrets and (peer is None or peer.uid != 0):
            raise RpcError(PERMISSION_DENIED, "permission denied: only root may see the config's secrets")
        cfg = s.config
        return {"source": str(cfg.source) if cfg.source else None, "redacted": not secrets,
                "config": _jsonable_config(s, secrets)}

    async def config_reload() -> dict[str, Any]:
        """Re-read the config file; a bad file is refused and the running config kept."""
        return await reload("control socket")

    async def diagnostics() -> dict[str, Any]:
        """The daemon's own footprint: RSS, threads, open fds, clients, and proof it never loaded torch & co."""
        import sys

        import psutil

        me = psutil.Process()
        with me.oneshot():
            mem, cpu, threads, fds = me.memory_info(), me.cpu_times(), me.num_threads(), me.num_fds()
        return {
            "rss_bytes": mem.rss,
            "cpu_user_s": cpu.user,
            "cpu_system_s": cpu.system,
            "threads": threads,
            "open_fds": fds,
            "clients": s.server.clients if s.server else 0,
            "requests_served": s.server.served if s.server else 0,
            "python": sys.version.split()[0],
            "heavy_modules_loaded": sorted(m for m in HEAVY_MODULES if sys.modules.get(m) is not None),
            "optional_modules_loaded": sorted(m for m in OPTIONAL_MODULES if sys.modules.get(m) is not None),
        }

    async def methods() -> list[dict[str, Any]]:
        """Every method with its one-line doc and whether it changes state."""
        return [{"name": m.name, "admin": m.admin, "doc": m.doc} for m in sorted(
            reg.methods.values(), key=lambda m: m.name)]

    register_gpu(reg, s)
    register_containers(reg, s)
    register_memories(reg, s)
    register_learning(reg, s)
    reg.add("status", status)
    reg.add("host", host)
    reg.add("alerts", alerts)
    reg.add("config.show", config_show)
    reg.add("config.reload", config_reload, admin=True)
    reg.add("diagnostics", diagnostics)
    reg.add("methods", methods)
