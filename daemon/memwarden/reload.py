"""A reload (SIGHUP, `memwardenctl reload`): read the config again and apply it whole, or refuse it whole.

The config is validated completely before anything is applied (config/loader.py, config/schema.py): a bad file
changes nothing and the running config stays in effect. Keys read only at start are reported as needing a
restart instead of being applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from memwarden.config import Config, ConfigError, locate_and_load
from memwarden.config.redact import remember, secret_values
from memwarden.logs import configure_logging, get_logger
from memwarden.services import Services

log = get_logger()

# Keys that are read once at start: a reload reports them as needing a restart instead of applying them.
RESTART_KEYS = ("daemon.state_dir", "daemon.socket", "daemon.socket_group", "gpu.backend", "gpu.sim_file",
                "ollama.url", "ollama.service", "proxy.enabled", "proxy.listen", "proxy.upstream",
                "containers.enabled", "containers.docker_url", "metrics.enabled", "metrics.listen")


def changed_keys(old: Config, new: Config) -> list[str]:
    a, b = asdict(old), asdict(new)
    return sorted(f"{section}.{key}" for section in a if isinstance(a[section], dict)
                  for key in a[section] if a[section][key] != b[section][key])


async def reload_config(services: Services, config_arg: Path | None, env: Mapping[str, str],
                        trigger: str) -> dict[str, Any]:
    """Load, validate and apply the config file; the reply says what changed (or every problem found). The
    front doors (socket limits, proxy) are the caller's to reconfigure once this says `reloaded`."""
    services.notifier.reloading()
    try:
        new = locate_and_load(config_arg, env)
    except ConfigError as exc:
        log.error("config reload failed; keeping the running config", trigger=trigger,
                  config=str(exc.source), errors=exc.problems)
        services.notifier.ready(services.status_line())
        return _outcome(services, trigger, {"reloaded": False, "config": str(exc.source), "errors": exc.problems})
    old = services.config
    changed = changed_keys(old, new)
    restart = [k for k in changed if k in RESTART_KEYS]
    remember(secret_values(new))
    if new.daemon.log_level != old.daemon.log_level or new.daemon.log_format != old.daemon.log_format:
        configure_logging(new.daemon.log_level, new.daemon.log_format)
    await services.reconfigure(new)
    log.info("config reloaded", trigger=trigger, config=str(new.source or "embedded defaults"),
             changed=changed, restart_required=restart)
    services.notifier.ready(services.status_line())
    return _outcome(services, trigger, {"reloaded": True, "config": str(new.source) if new.source else None,
                                        "changed": changed, "restart_required": restart})


def _outcome(services: Services, trigger: str, result: dict[str, Any]) -> dict[str, Any]:
    """The reply, kept for `status` too: a refused SIGHUP reload is otherwise seen only in the log."""
    services.readings.last_reload = {"at": services.wall(), "trigger": trigger, **result}
    return result
