"""`memwardenctl train watch [ADAPTER]`: follow a training run live until it ends.

The daemon has no push channel, so this polls `train.status` (and, once the run is no longer the current one,
`train.history`) every POLL_S: a bounded load however long the run. On a terminal the run is one progress bar
redrawn in place; with --json, or when stdout is not a terminal, each change of progress is one line (a JSON
object, or the plain line `train status` shows). Exit 0 when the run is promoted, 1 when it ends otherwise,
3 when the daemon goes away, 130 on Ctrl-C."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from memwarden.cli import render
from memwarden.cli.usage import EX_INTERRUPTED, fail
from memwarden.control.client import Client, ConnectError
from memwarden.units import format_duration

POLL_S = 0.5  # between two polls: fresh enough for a bar, a negligible load on the daemon
FINAL = ("promoted", "rejected", "failed", "cancelled")  # learning/runs.py FINAL: states a run never leaves
BAR_WIDTH = 24


def pick(status: dict[str, Any], adapter: str | None) -> tuple[str, str] | None:
    """(run id, adapter) of the run to follow: the one in progress, else the oldest pending one. A current run
    already judged is only exporting its adapter: the run to follow is the next one."""
    cur = status.get("current")
    if cur and cur.get("state") not in FINAL and adapter in (None, cur["adapter"]):
        return cur["run_id"], cur["adapter"]
    for p in status.get("pending_runs") or ():
        if adapter in (None, p["adapter"]):
            return p["id"], p["adapter"]
    return None


def snapshot(run_id: str, adapter: str, cur: dict[str, Any] | None, state: str) -> dict[str, Any]:
    """What one line shows: the run's state and, while it trains, its progress (rounded as `train status`)."""
    out: dict[str, Any] = {"run": run_id, "adapter": adapter, "state": state}
    if cur is None:
        return out
    prog, last = cur.get("progress") or {}, cur.get("last") or {}
    step, steps = prog.get("step"), prog.get("steps")
    loss, tps = prog.get("loss", last.get("loss")), prog.get("tokens_per_s", last.get("tokens_per_s"))
    out.update({"phase": prog.get("phase"), "step": step, "steps": steps,
                "percent": round(100 * step / steps, 1) if step is not None and steps else None,
                "loss": round(loss, 3) if isinstance(loss, (int, float)) else None,
                "tokens_per_s": round(tps) if isinstance(tps, (int, float)) else None,
                "eta_s": prog.get("eta_s")})
    return out


def bar(snap: dict[str, Any]) -> str:
    """`alice [#########...............] 37% dry run step 9/24, loss 5.525, ETA 12s`"""
    pct = snap.get("percent")
    if pct is None:
        return f"{snap['adapter']}: {snap['state']}"
    filled = round(BAR_WIDTH * pct / 100)
    parts = [f"{snap['adapter']} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {pct:3.0f}%",
             f"{snap['phase']} step {snap['step']}/{snap['steps']}"]
    if snap.get("loss") is not None:
        parts.append(f"loss {snap['loss']:.3f}")
    if snap.get("eta_s") is not None:
        parts.append(f"ETA {format_duration(snap['eta_s'])}")
    return " ".join(parts[:2]) + "".join(f", {p}" for p in parts[2:])


class Output:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.redraw = not as_json and sys.stdout.isatty()
        self.drawn = False

    def show(self, snap: dict[str, Any], cur: dict[str, Any] | None) -> None:
        if self.as_json:
            print(json.dumps(snap), flush=True)
        elif self.redraw:
            width = shutil.get_terminal_size().columns - 1
            sys.stdout.write("\r" + bar(snap)[:width].ljust(width))
            sys.stdout.flush()
            self.drawn = True
        else:
            line = render.progress_line(cur) if cur else f"run {snap['run']} ({snap['adapter']}): {snap['state']}"
            print(line, flush=True)

    def end(self, run: dict[str, Any] | None) -> None:
        self.stop()
        if self.as_json:
            print(json.dumps({"run": run["id"], "adapter": run["adapter"], "state": run["state"],
                              "reason": run.get("error") or run.get("reason"), "final": True}), flush=True)
        else:
            print(render.run(run) + (f": {run['error']}" if run.get("error") else ""), flush=True)

    def stop(self) -> None:
        if self.drawn:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.drawn = False


def watch(sock: Path, timeout: float, adapter: str | None, as_json: bool) -> int:
    """Runs inside memwardenctl's talking_to_daemon(): a daemon absent at the start is its one-line error."""
    out = Output(as_json)
    client = Client(sock, timeout=timeout)
    try:
        with client:
            return _follow(client, adapter, out)
    except KeyboardInterrupt:
        out.stop()
        return EX_INTERRUPTED
    except (ConnectError, ConnectionError) as exc:
        out.stop()
        return fail(f"the daemon went away during the watch ({exc})", 3)


def _follow(client: Client, adapter: str | None, out: Output) -> int:
    status = client.call("train.status")
    picked = pick(status, adapter)
    if picked is None:
        return fail(f"no run{f' of {adapter}' if adapter else ''} in progress or pending "
                    "(memwardenctl train start ADAPTER starts one)")
    run_id, name = picked
    shown = None
    while True:
        cur = status.get("current")
        if cur and cur["run_id"] == run_id:
            snap = snapshot(run_id, name, cur, cur["state"])
        else:
            run = next((r for r in client.call("train.history", {"limit": 50, "adapter": name})
                        if r["id"] == run_id), None)
            if run is None or run["state"] in FINAL:
                out.end(run or {"id": run_id, "adapter": name, "state": "gone"})
                return 0 if run and run["state"] == "promoted" else 1
            cur = None
            snap = snapshot(run_id, name, None, run["state"])
        if snap != shown:
            out.show(snap, cur)
            shown = snap
        time.sleep(POLL_S)
        status = client.call("train.status")
