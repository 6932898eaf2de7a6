"""Human output for memwardenctl: tables via tabulate, sizes and ages made readable."""

from __future__ import annotations

import json
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
        ("last reload", last_reload(r.get("last_reload"))),
    ])
    return out + "\n\nactive alerts:\n" + table(alert_rows(r["active_alerts"]),
                                                ["SEVERITY", "KIND", "KEY", "RAISED", "MESSAGE"])


def last_reload(x: dict[str, Any] | None) -> str:
    if x is None:
        return "none since the start"
    when = f"{ago(x['at'])} ({x['trigger']})"
    if x["reloaded"]:
        return f"{when}: reloaded, changed " + (", ".join(x["changed"]) or "nothing")
    return f"{when}: REFUSED, the running config is kept: " + "; ".join(x["errors"])


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
        ("RAM trend", trend(r.get("trend"))),
    ]
    levels = [[m, "-" if v["value"] is None else f"{v['value']:.1f}", v["level"], f"{v['warn']:g}",
               f"{v['crit']:g}"] for m, v in r["levels"].items()]
    return kv(pairs) + "\n\n" + table(levels, ["METRIC", "VALUE", "LEVEL", "WARN", "CRIT"])


def trend(t: dict[str, Any] | None) -> str:
    if not t or t["verdict"] == "warming":
        return "warming up (judged once samples span 10 s)"
    if t["verdict"] != "leak":
        return f"{t['verdict']} (no steady growth)"
    forecast = (f"; available RAM used up in {format_duration(t['exhausted_in'])}"
                if t["exhausted_in"] is not None else "")
    return (f"growing {format_size(t['slope'] * 3600)}/h at the {format_duration(t['scale'])} scale{forecast}"
            f"{' (warned)' if t['warned'] else ''}")


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


def gpu(r: dict[str, Any]) -> str:
    head = f"backend: {r['backend']}" + (f" (degraded: {r['error']})" if r["error"] else "")
    rows = [[g["index"], g["name"], format_size(g["used_bytes"]), format_size(g["total_bytes"]),
             f"{g['used_percent']:.0f}%", format_size(g["leasable_bytes"]), format_size(g["model_budget_bytes"]),
             "-" if g["temperature_c"] is None else f"{g['temperature_c']:.0f}°C"] for g in r["gpus"]]
    out = [head, table(rows, ["GPU", "NAME", "USED", "TOTAL", "USE", "LEASABLE", "MODEL BUDGET", "TEMP"])]
    procs = [[g["index"], p["pid"], p.get("name") or "-", format_size(p["used_bytes"])]
             for g in r["gpus"] for p in g.get("processes") or ()]
    if procs:
        out += ["", "processes:", table(procs, ["GPU", "PID", "NAME", "USED"])]
    if r["ollama_error"]:
        out += ["", f"ollama: unreachable ({r['ollama_error']})"]
    elif r["ollama"] is not None:
        models = [[m["name"], format_size(m["size"]), format_size(m["size_vram"]), m["expires_at"] or "-"]
                  for m in r["ollama"]["loaded"]]
        out += ["", f"ollama ({r['ollama']['url']}):", table(models, ["MODEL", "SIZE", "VRAM", "EXPIRES"])]
    out += ["", "leases:", leases({"active": r["leases"], "recent": []}).split("\n\n")[0]]
    return "\n".join(out)


def _lease_row(x: dict[str, Any]) -> list[Any]:
    return [x["id"], x["state"], x["gpu"], format_size(x["size"]), x["holder"][:40], x["pid"] or "-",
            ago(x["granted_at"]), ", ".join(e["name"] for e in x["evicted"]) or "-",
            "-" if x.get("downtime_s") is None else format_duration(x["downtime_s"])]


def leases(r: dict[str, Any]) -> str:
    headers = ["ID", "STATE", "GPU", "SIZE", "HOLDER", "PID", "GRANTED", "EVICTED", "DOWNTIME"]
    out = "active:\n" + table([_lease_row(x) for x in r["active"]], headers)
    if r["recent"]:
        out += "\n\nrecent:\n" + table([_lease_row(x) for x in r["recent"]], headers)
    return out


def lease(r: dict[str, Any]) -> str:
    restored = ", ".join(f"{x['name']} ({'ok' if x['ok'] else x.get('error')})" for x in r["restored"])
    return (f"lease {r['id']}: {r['state']}" + (f"; restored {restored}" if restored else "")
            + ("" if r.get("downtime_s") is None else f"; serving downtime {format_duration(r['downtime_s'])}"))


def models(r: list[dict[str, Any]]) -> str:
    rows = [[a["name"], "yes" if a["resident"] else "no", format_size(a["size"]) + ("" if a["size_measured"] else "*"),
             _load(a), ago(a["last_used"]), a["hits"], "yes" if a["pinned"] else "",
             "-" if a["gpu"] is None else a["gpu"]]
            for a in r]
    notes = [note for note, shown in (
        ("* size estimated from /api/tags until the model is seen loaded", any(not a["size_measured"] for a in r)),
        ("~ load time estimated from the size until a load is seen", any(not a.get("load_measured") for a in r)),
    ) if shown]
    return table(rows, ["MODEL", "RESIDENT", "SIZE", "LOAD", "LAST USE", "HITS", "PINNED", "GPU"]) + "".join(
        f"\n({note})" for note in notes)


def _load(a: dict[str, Any]) -> str:
    """The seconds a load of the model takes, the cost the eviction policy weighs (~: estimated)."""
    seconds = a.get("load_seconds")
    if seconds is None:
        return "-"
    return ("" if a.get("load_measured") else "~") + f"{seconds:.1f} s"


def model_result(r: dict[str, Any]) -> str:
    if "pinned" in r:
        return f"{r['model']}: {'pinned' if r['pinned'] else 'unpinned'}"
    if "hit" in r:
        if r["hit"]:
            return f"{r['model']}: already resident"
        return f"{r['model']}: loaded" + (f" (evicted {', '.join(r['evicted'])})" if r["evicted"] else "")
    return f"{r['model']}: evicted"


def run(r: dict[str, Any]) -> str:
    return f"run {r['id']} of {r['adapter']}: {r['state']}" + (f" ({r['reason']})" if r.get("reason") and
                                                                  r["state"] in ("rejected", "promoted") else "")


def recall_cell(e: dict[str, Any] | None, prefix: str = "recall") -> str:
    """`recalled/memories` and the mean token accuracy, e.g. `36/40 (acc 0.95)`; `-` where not measured."""
    e = e or {}
    if not e.get(f"{prefix}_memories"):
        return "-"
    acc = e.get(f"{prefix}_token_accuracy")
    return f"{e[f'{prefix}_recalled']}/{e[f'{prefix}_memories']}" + ("" if acc is None else f" (acc {acc:.2f})")


def probe_cell(e: dict[str, Any] | None) -> str:
    """Earlier rounds' memories recalled before → after the run, e.g. `18/20→17/20`."""
    e = e or {}
    before, after = (f"{e.get(f'{p}_recalled')}/{e.get(f'{p}_memories')}" if e.get(f"{p}_memories") else "-"
                     for p in ("probe_recall_before", "probe_recall_after"))
    return "-" if before == after == "-" else f"{before}→{after}"


def preference_cell(e: dict[str, Any] | None) -> str:
    """Held-out preference accuracy before → after the run's DPO stage and the pairs, e.g. `50%→83% of 6`."""
    e = e or {}
    before, after = e.get("preference_accuracy_before"), e.get("preference_accuracy_after")
    if not e.get("dpo_steps") or not isinstance(before, int | float) or not isinstance(after, int | float):
        return "-"
    return f"{before:.0%}→{after:.0%} of {e.get('preference_heldout')}"


def general_cell(e: dict[str, Any] | None) -> str:
    """The general-probe loss before → after the run and its relative change, e.g. `1.210→1.228 (+1.5%)`."""
    e = e or {}
    before, after = e.get("general_loss_before"), e.get("general_loss_after")
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return "-"
    return f"{before:.3f}→{after:.3f}" + (f" ({(after - before) / before:+.1%})" if before > 0 else "")


def runs(r: list[dict[str, Any]]) -> str:
    def ev(x: dict[str, Any]) -> str:
        e = x.get("eval") or {}
        if "holdout_loss_after" not in e:
            return "-"
        return f"{e['holdout_loss_before']:.3f}→{e['holdout_loss_after']:.3f}"

    rows = [[x["id"], x["adapter"], x["state"], x["trigger"], ago(x["created_at"]), x["memory_ids"], ev(x),
             recall_cell(x.get("eval")), recall_cell(x.get("eval"), "recall_heldout"), probe_cell(x.get("eval")),
             general_cell(x.get("eval")), preference_cell(x.get("eval")),
             "-" if x.get("version") is None else f"v{x['version']}", where_cell(x),
             (x.get("error") or (x.get("reason") if x["state"] in ("rejected", "promoted") else "") or "")[:60]]
            for x in r]
    return table(rows, ["RUN", "ADAPTER", "STATE", "TRIGGER", "CREATED", "MEMORIES", "HOLDOUT", "RECALL",
                        "REWORDED", "PROBE", "GENERAL", "PREFERRED", "VERSION", "WHERE", "NOTE"])


def where_cell(x: dict[str, Any]) -> str:
    """The run's executor, and its cluster node (shortened) when it ran on one."""
    node = x.get("node")
    return (x.get("executor") or "-") + (f"@{node[:12]}" if node else "")


def progress_line(cur: dict[str, Any]) -> str:
    """One run in progress on one line: `run ID (ADAPTER): STATE, step N of M (P%), loss L, T tokens/s, ETA`."""
    last, prog = cur.get("last") or {}, cur.get("progress") or {}
    head = f"run {cur['run_id']} ({cur['adapter']}): {cur['state']}"
    if prog.get("step") is None:
        return f"{head}, {last.get('event') or 'starting'}"
    step, total = prog["step"], prog.get("steps")
    parts = [f"{prog.get('phase', 'training')} step {step}" + (
        f" of {total} ({100 * step / total:.0f}%)" if total else "")]
    loss, tps = prog.get("loss", last.get("loss")), prog.get("tokens_per_s", last.get("tokens_per_s"))
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.3f}")
    if isinstance(tps, (int, float)):
        parts.append(f"{tps:.0f} tokens/s")
    if last.get("event") not in (None, "step"):
        parts.append(last["event"])
    if prog.get("eta_s") is not None:
        parts.append(f"ETA {format_duration(prog['eta_s'])}")
    return f"{head}, " + ", ".join(parts)


WAIT_WORDS = {"wait": "waiting for the GPU", "blocked": "blocked: waiting for the GPU past learning.gpu_wait",
              "held": "held: the GPU is refused and a CPU run would cross the RAM warning level",
              "cpu": "moving to the CPU"}


def waiting_line(p: dict[str, Any], w: dict[str, Any]) -> str:
    """A run waiting for its lease: for how long, what holds the GPU, and why (the arbiter's words)."""
    holders = ", ".join(w["holders"]) or "nothing memwarden can name"
    return (f"run {p['id']} ({p['adapter']}): {WAIT_WORDS.get(w['action'], w['action'])} for "
            f"{format_duration(w['waited_s'])}; held by: {holders}\n  why: {w['reason']}")


def train_status(r: dict[str, Any]) -> str:
    cur = r["current"]
    lines = [f"learning: {'enabled' if r['enabled'] else 'disabled (learning.enabled = false)'}"]
    if cur:
        lines.append(progress_line(cur))
    pending = r.get("pending_runs") or [{"id": p, "adapter": "?", "state": "pending"} for p in r["pending"]]
    waits = {w["run_id"]: w for w in r.get("waiting_runs") or ()}
    lines += [waiting_line(p, waits[p["id"]]) if p["id"] in waits else f"run {p['id']} ({p['adapter']}): pending "
              f"({p['state']})" for p in pending if not cur or p["id"] != cur["run_id"]]
    if len(lines) == 1:
        lines.append("runs: none in progress or pending")
    due = [[d["adapter"], f"{d['importance']:g}/{d['threshold']:g}", "yes" if d["due"] else "no", d["message"]]
           for d in r["due"]]
    lines += ["", table(due, ["ADAPTER", "IMPORTANCE", "DUE", "WHY"])]
    versions = [[v["adapter"], f"v{v['version']}", "active" if v["active"] else "", v["ollama_model"] or "-",
                 ago(v["created_at"]), recall_cell(v), recall_cell(v, "recall_heldout"), probe_cell(v),
                 general_cell(v), preference_cell(v)] for v in r["versions"]]
    if versions:
        lines += ["", table(versions, ["ADAPTER", "VERSION", "", "OLLAMA MODEL", "CREATED", "RECALL", "REWORDED",
                                       "PROBE", "GENERAL", "PREFERRED"])]
    return "\n".join(lines)


def adapters(r: list[dict[str, Any]]) -> str:
    rows = [[a["name"], a["profile"] or "-", a["memories"], f"{a['unconsolidated_importance']:g}/{a['threshold']:g}",
             "-" if a["active_version"] is None else f"v{a['active_version']}", a["versions"],
             a["ollama_model"] or "-", "-" if a["last_run"] is None else a["last_run"]["state"]] for a in r]
    return table(rows, ["ADAPTER", "PROFILE", "MEMORIES", "TO LEARN", "ACTIVE", "VERSIONS", "OLLAMA MODEL", "LAST RUN"])


def versions(r: list[dict[str, Any]]) -> str:
    rows = [[f"v{v['version']}", "yes" if v["active"] else "", v["run_id"] or "-", ago(v["created_at"]),
             v["ollama_model"] or "-", v["path"]] for v in r]
    return table(rows, ["VERSION", "ACTIVE", "RUN", "PROMOTED", "OLLAMA MODEL", "PATH"])


def adapter(r: dict[str, Any]) -> str:
    active = "none" if r["active_version"] is None else f"v{r['active_version']}"
    head = [f"adapter {r['name']} (profile {r['profile'] or '-'}): {r['memories']} memories, "
            f"{r['unconsolidated']} not learned yet (importance {r['unconsolidated_importance']:g} of "
            f"{r['threshold']:g}); active version {active}"
            + (f", in Ollama as {r['ollama_model']}" if r["ollama_model"] else "")]
    parts = ["\n".join(head)]
    if r["version_list"]:
        parts.append(versions(r["version_list"]))
    if r["runs"]:
        parts.append(runs(r["runs"]))
    return "\n\n".join(parts)


def rollback(r: dict[str, Any]) -> str:
    return f"{r['adapter']}: v{r['active']} active again (was v{r['was']})"


def diagnostics(r: dict[str, Any]) -> str:
    return kv([
        ("RSS", format_size(r["rss_bytes"])),
        ("CPU", f"{r['cpu_user_s']:.1f}s user, {r['cpu_system_s']:.1f}s system"),
        ("threads", r["threads"]),
        ("open fds", r["open_fds"]),
        ("clients", f"{r['clients']} connected, {r['requests_served']} requests served"),
        ("python", r["python"]),
        ("heavy modules", ", ".join(r["heavy_modules_loaded"]) or "none loaded (as it should be)"),
        ("optional modules", ", ".join(r["optional_modules_loaded"]) or "none loaded"),
    ])


def config_show(r: dict[str, Any]) -> str:
    """The config in effect as TOML-like `key = value` lines under their sections: what a file would say."""
    lines = [f"# {r['source'] or 'embedded defaults'}" + (", secrets redacted" if r["redacted"] else "")]
    for section, values in r["config"].items():
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {json.dumps(v, ensure_ascii=False, default=str)}" for k, v in values.items()]
    return "\n".join(lines)
