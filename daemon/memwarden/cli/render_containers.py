"""Human output for memwardenctl's container commands: the watch, the leaks and the restart history."""

from __future__ import annotations

from typing import Any

from memwarden.cli.render import ago, table
from memwarden.units import format_duration, format_size


def _rate(bps: float | None) -> str:
    return "-" if bps is None else f"{format_size(bps * 60)}/min"


def _restarts(c: dict[str, Any]) -> str:
    total, day = c.get("restarts", 0), c.get("restarts_24h", 0)
    return str(total) if total == day else f"{total} ({day} in 24h)"


def containers(r: dict[str, Any]) -> str:
    rows = [[c["name"], format_size(c["working_set"]), format_size(c["limit"]) if c["limit"] else "none",
             _rate(c["slope_bps"]), c["verdict"], c["action"], _restarts(c)] for c in r["containers"]]
    out = table(rows, ["NAME", "WORKING SET", "LIMIT", "SLOPE", "VERDICT", "ACTION", "RESTARTS"])
    return (f"docker: unreachable ({r['error']})\n" if r["error"] else "") + out


def leaks(r: list[dict[str, Any]]) -> str:
    rows = [[c["name"], c["verdict"], format_size(c["working_set"]),
             format_size(c["limit"]) if c["limit"] else "none", _rate(c["slope_bps"]),
             "-" if c.get("scale_s") is None else format_duration(c["scale_s"]),
             "-" if c["exhaustion_in_s"] is None else f"{format_duration(c['exhaustion_in_s'])} ({c['exhaustion_of']})"]
            for c in r]
    return table(rows, ["NAME", "VERDICT", "WORKING SET", "LIMIT", "SLOPE", "SCALE", "EXHAUSTED IN"])


def container_history(r: list[dict[str, Any]]) -> str:
    def outcome(x: dict[str, Any]) -> str:
        if x["error"]:
            return f"failed: {x['error']}"
        if x["dry_run"]:
            return "dry run"
        return {None: "verifying", 1: "helped", 0: "did not help"}[x["effective"]]

    rows = [[ago(x["at"]), x["container"], x["reason"], format_size(x["working_set_before"]),
             format_size(x["working_set_after"]) if x["working_set_after"] is not None else "-", outcome(x)]
            for x in r]
    return table(rows, ["WHEN", "CONTAINER", "REASON", "BEFORE", "AFTER", "OUTCOME"])


def restarted(r: dict[str, Any]) -> str:
    return f"{r['container']}: " + ("restart logged (dry run)" if r["dry_run"] else "restarted; verifying")
