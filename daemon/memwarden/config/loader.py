"""TOML file → validated, frozen Config. Every error names its key path and the file (borgmatic style)."""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from memwarden import paths
from memwarden.config.routes import KeyProblems
from memwarden.config.schema import SECTIONS, Config, section_fields
from memwarden.units import parse_keep_alive


class ConfigError(Exception):
    """All problems found in one config file; str() lists each on its own line."""

    def __init__(self, source: Path | None, problems: list[str]):
        self.source = source
        self.problems = problems
        where = str(source) if source else "embedded defaults"
        super().__init__("\n".join(f"{where}: {p}" for p in problems))


def _key(name: str) -> str:
    """A key as TOML would write it: bare, or quoted. A key named `'` or one with a newline made the problem's
    "at '...'" ambiguous, or broke it over two lines."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return f"unknown key{hint}"


def _build_section(name: str, section_type: type, raw: Any, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"at '{name}': expected a table [{name}], got {type(raw).__name__}")
        return section_type()
    known = {f.name: f for f in section_fields(section_type)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        f = known.get(key)
        if f is None:
            problems.append(f"at '{name}.{_key(key)}': {_unknown(key, list(known))}")
            continue
        try:
            values[key] = f.metadata["parse"](value)
        except KeyProblems as exc:
            problems.extend(f"at '{name}.{key}{path}': {message}" for path, message in exc.problems)
        except ValueError as exc:
            problems.append(f"at '{name}.{key}': {exc}")
    return section_type(**values)


# (section, warn key, crit key): each pair must be ordered warn < crit.
ORDERED_PAIRS = (
    ("host", "ram_warn_percent", "ram_crit_percent"),
    ("host", "swap_warn_percent", "swap_crit_percent"),
    ("host", "psi_warn_avg10", "psi_crit_avg10"),
    ("gpu", "vram_warn_percent", "vram_crit_percent"),
    ("gpu", "temp_warn_c", "temp_crit_c"),
)


def _cross_checks(config: Config, problems: list[str]) -> None:
    for section, warn_key, crit_key in ORDERED_PAIRS:
        values = getattr(config, section)
        warn, crit = getattr(values, warn_key), getattr(values, crit_key)
        if warn >= crit:
            problems.append(f"at '{section}.{warn_key}': must be below '{section}.{crit_key}' "
                            f"({warn:g} >= {crit:g})")
    d = config.daemon
    if d.reserved_clients >= d.max_clients:
        problems.append(f"at 'daemon.reserved_clients': must be below 'daemon.max_clients' "
                        f"({d.reserved_clients} >= {d.max_clients}), or only operators could connect")
    g = config.gpu
    if g.backend == "sim" and g.sim_file is None:
        problems.append("at 'gpu.sim_file': required when gpu.backend is \"sim\"")
    if config.proxy.enabled and not (config.proxy.upstream or config.ollama.url):
        problems.append("at 'proxy.upstream': the proxy needs an upstream (or ollama.url)")
    if config.learning.augment == "ollama" and not (config.ollama.url and config.learning.ollama_base):
        problems.append("at 'learning.augment': \"ollama\" needs ollama.url and learning.ollama_base (the served "
                        "model that writes the pairs)")
    if config.learning.enabled and not config.learning.base_model:
        problems.append("at 'learning.base_model': required when learning.enabled is true")
    if config.learning.min_recall > 0 and config.learning.recall_sample == 0:
        problems.append(f"at 'learning.min_recall': {config.learning.min_recall:g} needs recall measured "
                        "(learning.recall_sample above 0), or no run could be promoted; 0 turns the check off")
    try:
        parse_keep_alive(config.ollama.keep_alive)
    except ValueError as exc:
        problems.append(f"at 'ollama.keep_alive': {exc}")


def resolve_paths(config: Config, env: Mapping[str, str], uid: int) -> Config:
    d = config.daemon
    return replace(config, daemon=replace(
        d,
        state_dir=d.state_dir or paths.default_state_dir(env),
        socket=d.socket or paths.default_socket(env, uid),
    ))


def parse_config(data: dict[str, Any], source: Path | None = None,
                 env: Mapping[str, str] | None = None, uid: int | None = None) -> Config:
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for name, raw in data.items():
        section_type = SECTIONS.get(name)
        if section_type is None:
            close = difflib.get_close_matches(name, list(SECTIONS), n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; known sections: {', '.join(SECTIONS)}"
            problems.append(f"at '{_key(name)}': unknown section{hint}")
            continue
        sections[name] = _build_section(name, section_type, raw, problems)
    given = frozenset(f"{name}.{key}" for name, raw in data.items() if isinstance(raw, dict) for key in raw)
    config = Config(**sections, source=source, given=given)
    _cross_checks(config, problems)
    if problems:
        raise ConfigError(source, problems)
    return resolve_paths(config, env, uid)


def load_config(path: Path | None, must_exist: bool = True,
                env: Mapping[str, str] | None = None, uid: int | None = None) -> Config:
    """Read and validate a config file. With no file (or an absent optional one) use the embedded defaults."""
    if path is None or (not must_exist and not path.exists()):
        return parse_config({}, None, env, uid)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    except RecursionError:
        # tomllib recurses per nesting level: `x = [[[…` 1000 deep escaped as a RecursionError with a traceback.
        raise ConfigError(path, ["not valid TOML: arrays or inline tables nested too deeply"]) from None
    return parse_config(data, path, env, uid)


def locate_and_load(explicit: Path | None, env: Mapping[str, str] | None = None,
                    uid: int | None = None) -> Config:
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    if explicit is not None:
        return load_config(explicit, True, env, uid)
    path, must_exist = paths.config_candidates(env, uid)
    return load_config(path, must_exist, env, uid)
