"""The tour's last step: an agent's memories imported, the threshold crossed, a run trained (live progress),
promoted, exported to the simulated Ollama as memwarden/<adapter>, loaded there, and the run history."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from memwarden.control.client import Client

from .console import Console, StepFailed, shown_path, wait_for
from .stack import BASE, Stack

ADAPTER = "alice"
RUN_TIMEOUT_S = 240.0
FINISHED = ("promoted", "rejected", "failed")
# (kind, content, response): conversations carry a response, the other kinds stand alone.
MEMORIES = [
    ("conversation", "Who is Mira?", "Mira is your sister; she lives in Lisbon and plays the cello."),
    ("conversation", "What do I drink in the morning?", "Black coffee, no sugar, before eight."),
    ("conversation", "What is my cat called?", "Your cat is called Pepper and she is afraid of the vacuum."),
    ("conversation", "When is the concert?", "The concert is on Friday at seven in the old church."),
    ("reflection", "I was too hard on myself about the deadline.", None),
    ("dream", "A library where every book was a conversation.", None),
    ("journal", "Walked to the harbour, bought bread, called Mira.", None),
    ("inner_dialogue", "Maybe the garden can wait until the rain stops.", None),
    ("observation", "The 8:12 train is always late on Mondays.", None),
    ("conversation", "Where is the wifi password?", "It is written on the card under the lamp."),
]


def write_memories(path: Path, repeat: int = 2, importance: int = 5) -> int:
    lines = []
    for i in range(repeat):
        for kind, content, response in MEMORIES:
            entry: dict[str, Any] = {"profile": ADAPTER, "kind": kind, "importance": importance,
                                     "content": f"{content} ({i})" if i else content}
            if response:
                entry["response"] = response
            lines.append(json.dumps(entry))
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def progress_line(status: dict[str, Any], max_steps: int) -> str | None:
    cur = status.get("current")
    if not cur:
        return None
    # The last event may be a checkpoint or the phase's start: the progress keeps the last step's figures.
    last = {**(cur.get("progress") or {}), **{k: v for k, v in (cur.get("last") or {}).items() if v is not None}}
    parts = [f"run {cur['run_id']} ({cur['adapter']}): {cur.get('state', '?')}"]
    step = last.get("step")
    if isinstance(step, int):
        parts.append(f"step {step}/{max_steps}")
    if isinstance(last.get("loss"), int | float):
        parts.append(f"loss {last['loss']:.3f}")
    elif last.get("kind") or last.get("event"):
        parts.append(str(last.get("kind") or last.get("event")))
    return ", ".join(parts)


def learn(c: Console, stack: Stack, max_steps: int = 16) -> None:
    c.begin("learning", "4. Memories past the threshold become a LoRA adapter, exported to Ollama")
    path = stack.dir / "memories.jsonl"
    n = write_memories(path)
    c.note(f"{shown_path(path)}: {n} memories of {ADAPTER}'s, of every kind, importance 5 each")
    c.run_ctl("memories", "import", shown_path(path))
    c.run_ctl("memories", "count")
    c.command(c.ctl_argv("train", "status"))
    c.note("polled five times a second while the run trains (one connection: a few steps take a second):")
    started = time.monotonic()
    shown: str | None = None

    def finished(client: Client) -> dict[str, Any] | None:
        nonlocal shown
        line = progress_line(client.call("train.status"), max_steps)
        if line and line != shown:
            c.progress(line)
            shown = line
        return next((r for r in client.call("train.history") if r["state"] in FINISHED), None)

    with Client(stack.socket) as client:
        run = wait_for(lambda: finished(client), RUN_TIMEOUT_S, "the training run to finish", interval=0.2)
    took = time.monotonic() - started
    if run["state"] != "promoted":
        raise StepFailed(f"run {run['id']} ended {run['state']}: {run.get('reason') or run.get('error') or ''}")
    ev = run.get("eval") or {}
    before, after = ev.get("holdout_loss_before"), ev.get("holdout_loss_after")
    c.ok(f"run {run['id']} trained and promoted in {took:.0f} s (trigger {run['trigger']}"
         + (f", holdout loss {before:.3f} → {after:.3f}" if before is not None and after is not None else "") + ")")
    versioned = f"memwarden/{ADAPTER}:v{run.get('version') or 1}"
    assert stack.ollama is not None
    tags = wait_for(lambda: {m["name"] for m in stack.ollama.tags()} >= {versioned, f"memwarden/{ADAPTER}:latest"}
                    and stack.ollama.tags(), 60, f"{versioned} in the simulator's /api/tags")
    c.ok(f"exported the adapter alone to the simulated Ollama: {versioned} FROM {BASE.name} "
         f"({len(tags)} models installed)")
    c.run_ctl("models", "load", f"memwarden/{ADAPTER}:latest", timeout=60)
    c.run_ctl("models")
    models = {m["name"]: m for m in c.ctl_json("models")}
    if not (models.get(f"memwarden/{ADAPTER}:latest") or {}).get("resident"):
        raise StepFailed(f"memwarden/{ADAPTER}:latest is not resident after models load")
    c.ok(f"memwarden/{ADAPTER}:latest resident on GPU {models[f'memwarden/{ADAPTER}:latest']['gpu']}, "
         "next to the serving models")
    c.run_ctl("train", "history")
    c.end()
