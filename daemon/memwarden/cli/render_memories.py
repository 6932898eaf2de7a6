"""Human output for memwardenctl's memory commands: add, import, list, count and show."""

from __future__ import annotations

import time
from typing import Any

from memwarden.cli.render import ago, kv, table


def _one_line(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def memory_added(r: dict[str, Any]) -> str:
    return (f"added memory {r['id']} ({r['profile']}, {r['kind']}, importance {r['importance']}) "
            f"→ adapter {r['adapter']}")


def imported(r: dict[str, Any]) -> str:
    n = r["imported"]
    per = ", ".join(f"{a}: {c}" for a, c in sorted(r["by_adapter"].items()))
    return f"imported {n} memor{'y' if n == 1 else 'ies'}" + (f" ({per})" if per else "")


def memories(r: dict[str, Any]) -> str:
    rows = [[m["id"], m["profile"], m["kind"], m["adapter"], m["importance"], _when(m["created_at"]),
             m["consolidated_run"] or "-", m.get("superseded_by") or "-", _one_line(m["content"])]
            for m in r["memories"]]
    out = table(rows, ["ID", "PROFILE", "KIND", "ADAPTER", "IMP", "CREATED", "CONSOLIDATED BY", "SUPERSEDED BY",
                       "CONTENT"])
    return out + (f"\n({len(r['memories'])} of {r['total']})" if r["total"] > len(r["memories"]) else "")


def memory_counts(r: dict[str, Any]) -> str:
    groups = [[g["profile"], g["adapter"], g["kind"], g["memories"], g["unconsolidated"], g["importance"]]
              for g in r["groups"]]
    adapters = [[a["adapter"], a["profile"], a["count"], f"{a['importance']:g} / {r['threshold']:g}",
                 "yes" if a["importance"] >= r["threshold"] else "no"] for a in r["adapters"]]
    superseded = f", {r['superseded']} superseded by newer ones" if r.get("superseded") else ""
    return (f"{r['total']} memories, {r['unconsolidated']} not consolidated yet{superseded}\n\n"
            + table(groups, ["PROFILE", "ADAPTER", "KIND", "MEMORIES", "UNCONSOLIDATED", "IMPORTANCE"])
            + "\n\nunconsolidated importance per adapter:\n"
            + table(adapters, ["ADAPTER", "PROFILE", "MEMORIES", "IMPORTANCE / THRESHOLD", "REACHED"]))


def memory(r: dict[str, Any]) -> str:
    pairs = [("id", r["id"]), ("profile", r["profile"]), ("kind", r["kind"]), ("adapter", r["adapter"]),
             ("importance", r["importance"]), ("created", f"{_when(r['created_at'])} ({ago(r['created_at'])})"),
             ("consolidated", "no" if r["consolidated_run"] is None else
              f"by run {r['consolidated_run']}, {_when(r['consolidated_at'])}")]
    pairs += [(name, r[name]) for name in ("cue", "title") if r.get(name)]
    if r.get("tags"):
        pairs.append(("tags", ", ".join(r["tags"])))
    if r.get("superseded_by") is not None:
        pairs.append(("superseded", f"by memory {r['superseded_by']} (a newer one with the same cue)"))
    out = kv(pairs) + "\n\ncontent:\n" + r["content"]
    for name in ("response", "prompt", "chosen", "rejected"):
        if r.get(name) is not None:
            out += f"\n\n{name}:\n" + r[name]
    return out
