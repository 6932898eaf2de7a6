"""[[learning.routes]]: which memories feed which adapter, checked here once, when the config is read.

Every name a route holds is checked against the rules the memory store lives by (learning/store.py), so a
config that loads is one the store can use as it comes, and a bad one is refused with each problem at its own
key path (`at 'learning.routes[0].adapter': …`).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

# Profile and adapter names: no '@', which qualifies an adapter by its profile (see learning/store.py).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1–64 letters, digits, '_', '.' or '-', starting with a letter or digit"
MAX_KIND = 64  # characters of a memory's kind


class Route(NamedTuple):
    """One [[learning.routes]] table: memories of these profiles and kinds feed `adapter` ([] = any)."""

    adapter: str
    profiles: tuple[str, ...]
    kinds: tuple[str, ...]


class KeyProblems(ValueError):
    """Problems inside one key's value (a list of tables), each at its own sub-path such as `[0].adapter`."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))
        self.problems = problems


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _route(item: Any, at: str, problems: list[tuple[str, str]]) -> Route | None:
    if not isinstance(item, dict):
        problems.append((at, f"expected a table with adapter, profiles and kinds, got {_shown(item)}"))
        return None
    before = len(problems)
    for key in sorted(set(item) - {"adapter", "profiles", "kinds"}, key=str):
        shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)  # as TOML would write it
        problems.append((f"{at}.{shown}", "unknown key; expected adapter, profiles, kinds"))
    adapter = item.get("adapter")
    if adapter is None:
        problems.append((f"{at}.adapter", "required: the adapter these memories feed"))
    elif not isinstance(adapter, str) or not NAME_RE.match(adapter):
        problems.append((f"{at}.adapter", f"expected {NAME_RULE} (no '@'), got {_shown(adapter)}"))
    lists: dict[str, tuple[str, ...]] = {}
    for key, ok, rule in (
            ("profiles", lambda x: isinstance(x, str) and NAME_RE.match(x), f"a profile name: {NAME_RULE}"),
            ("kinds", lambda x: isinstance(x, str) and x.strip() and len(x) <= MAX_KIND and x.isprintable(),
             f"a kind: a non-empty string of at most {MAX_KIND} printable characters")):
        names = item.get(key, [])
        if not isinstance(names, list):
            problems.append((f"{at}.{key}", f"expected a list of names ([] = any), got {_shown(names)}"))
            continue
        for j, name in enumerate(names):
            if not ok(name):
                problems.append((f"{at}.{key}[{j}]", f"expected {rule}, got {_shown(name)}"))
        lists[key] = tuple(names)
    if len(problems) > before:
        return None
    return Route(adapter, lists["profiles"], lists["kinds"])


def routes(value: Any) -> tuple[Route, ...]:
    """[[learning.routes]] tables {adapter, profiles = [...], kinds = [...]}, every name checked here, once: the
    memory store trusts them."""
    if not isinstance(value, list):
        raise ValueError("expected a list of tables [[learning.routes]] with adapter, profiles and kinds")
    problems: list[tuple[str, str]] = []
    out = [_route(item, f"[{i}]", problems) for i, item in enumerate(value)]
    if problems:
        raise KeyProblems(problems)
    return tuple(r for r in out if r is not None)
