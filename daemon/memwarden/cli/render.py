"""Human output for memwardenctl: tables via tabulate, sizes and ages made readable."""

from __future__ import annotations

import time
from typing import Any

from tabulate import tabulate

from memwarden.units import format_duration, format_size


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    return format_duration(max(0.0, (now or time.time()) - ts)) + " ago"


def table(rows: list[list[Any]], headers: list[str]) -> str:
    if not rows:
        return "(none)"
    return tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True)


def kv(pairs: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in pairs)


def alert_rows(alerts: list[dict[str, Any]]) -> list[list[Any]]:
    return [[a["severity"], a["kind"], a["key"], ago(a["raised_at"]), a["message"]] for a in alerts]


def status(r: dict[str, Any]) -> str:
    last = r["last_sample"]
    out = kv([
        ("version", r["version"]),
        ("pid", r["pid"]),
        ("uptime", format_duration(r["uptime_s"])),
        ("config", r["config"] or "embedded defaults"),
        ("state", r["state_dir"]),
        ("dry run", "yes" if r["dry_run"] else "no"),
        ("last sample", f"{ago(last['at'])} ({last['duration_ms']} ms; #{last['count']}, "
                        f"every {format_duration(last['interval_s'])})"),
        ("summary", r["summary"]),
        ("degraded", ", ".join(f"{k}: {v}" for k, v in r["degraded"].items()) or "no"),
    ])
    return out + "\n\nactive alerts:\n" + table(alert_rows(r["active_alerts"]),
                                                ["SEVERITY", "KIND", "KEY", "RAISED", "MESSAGE"])


def host(r: dict[str, Any]) -> str:
    if not r["sampled"]:
        return f"no host sample yet{': ' + r['error'] if r.get('error') else ''}"
    p = r["pressure"]
    pairs = [
        ("RAM", f"{r['ram_used_percent']:.1f}% used, {format_size(r['mem_available'])} available "
                f"of {format_size(r['mem_total'])}"),
        ("swap", f"{r['swap_used_percent']:.1f}% used ({format_size(r['swap_used'])} of "
                 f"{format_size(r['swap_total'])})" if r["swap_total"] else "none configured"),
        ("PSI memory", f"some avg10 {p['some_avg10']:.2f}%, full avg10 {p['full_avg10']:.2f}%, "
                       f"some total {p['some_total_us'] / 1e6:.1f}s" if p else
                       f"unavailable ({r['pressure_error']})"),
        ("reserve", format_size(r["reserve"])),
        ("admittable", format_size(r["admittable_bytes"])),
    ]
    levels = [[m, "-" if v["value"] is None else f"{v['value']:.1f}", v["level"], f"{v['warn']:g}",
               f"{v['crit']:g}"] for m, v in r["levels"].items()]
    return kv(pairs) + "\n\n" + table(levels, ["METRIC", "VALUE", "LEVEL", "WARN", "CRIT"])


def alerts(r: dict[str, Any]) -> str:
    recent = [[a["severity"], a["kind"], a["key"], ago(a["raised_at"]),
               "active" if a["resolved_at"] is None else ago(a["resolved_at"]).replace(" ago", " ago"),
               a["message"]] for a in r["recent"]]
    return ("active:\n" + table(alert_rows(r["active"]), ["SEVERITY", "KIND", "KEY", "RAISED", "MESSAGE"])
            + "\n\nrecent:\n" + table(recent, ["SEVERITY", "KIND", "KEY", "RAISED", "RESOLVED", "MESSAGE"]))


def reload(r: dict[str, Any]) -> str:
    if not r["reloaded"]:
        return "reload refused; the running config is kept:\n" + "\n".join(f"  {e}" for e in r["errors"])
    lines = [f"reloaded {r['config'] or 'embedded defaults'}",
             "changed: " + (", ".join(r["changed"]) or "nothing")]
    if r["restart_required"]:
        lines.append("takes effect after a restart: " + ", ".join(r["restart_required"]))
    return "\n".join(lines)
