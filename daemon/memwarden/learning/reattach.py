"""Before a phase's trainer is started: what became of the one a daemon started for it earlier, and what to do.

A trainer may run on, finish or fail while no daemon watches it (a systemd unit or a Ray job outlives the
daemon; a child trainer may finish in the moments before it notices its daemon died). The executor reports
what it finds of the last job it started for the phase (a Trace: none, still running, or ended with a status),
the run's output directory whether the finished adapter is already in place (final/ and eval.json of this
run), and decide() is the pure policy over both:

- `watch`: the trainer still runs, or it finished and its adapter comes home only through its job (a Ray job's
  log): re-attach to it;
- `take`: it ended and its exit stands as if it had been watched: a finished run is judged and promoted (or
  rejected), a failure counts as one of the run's attempts (a retry from the checkpoint, or the run failed)
  with the exit status in the reason;
- `start`: nothing to take (nothing found, preempted, or ended without a status): start the phase, which
  resumes from its checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from memwarden.learning.eval_report import EvalReport
from memwarden.learning.jobspec import EXIT_DONE, EXIT_PREEMPTED

WATCH = "watch"
TAKE = "take"
START = "start"
DRY = "dry"  # the dry run: it leaves nothing behind, only its exit says it passed
RUN = "run"  # the real run: it leaves final/ and eval.json


@dataclass(frozen=True)
class Trace:
    """What an executor knows of the last job it started for a phase."""

    state: Literal["none", "running", "ended"]
    exit_code: int | None = None  # the trainer's own exit status where one was recorded
    fetchable: bool = False  # its output comes home by re-attaching to it (not on this host's disk)
    detail: str = ""  # how the executor saw it end: systemd's unit result, Ray's job status and message


NOTHING = Trace("none")


@dataclass(frozen=True)
class Found:
    phase: str  # DRY or RUN
    trace: Trace
    adapter_home: bool  # final/ and eval.json of this run are in its output directory

    @property
    def anything(self) -> bool:
        return self.trace.state != "none" or self.adapter_home


@dataclass(frozen=True)
class Reattach:
    action: str  # WATCH | TAKE | START
    code: int | None  # TAKE: the exit the run goes on with
    reason: str
    found: Found

    def log_fields(self) -> dict[str, Any]:
        return {"decision": "training.reattach", "action": self.action, "code": self.code, "reason": self.reason,
                "phase": self.found.phase, **{f"trace_{k}": v for k, v in asdict(self.found.trace).items()},
                "adapter_home": self.found.adapter_home}


def decide(found: Found) -> Reattach:
    t = found.trace
    if t.state == "running":
        return Reattach(WATCH, None, "its trainer is still running", found)
    if found.phase == RUN and found.adapter_home:
        return Reattach(TAKE, EXIT_DONE, "its trainer finished unwatched: the adapter and its report are in place",
                        found)
    if t.state != "ended":
        return Reattach(START, None, "no trainer of it was left running or ended", found)
    how = f" ({t.detail})" if t.detail else ""
    if t.exit_code == EXIT_DONE:
        if found.phase == DRY:
            return Reattach(TAKE, EXIT_DONE, f"its dry run passed unwatched{how}", found)
        if t.fetchable:
            return Reattach(WATCH, None, f"its trainer finished unwatched; the adapter comes from its job{how}",
                            found)
        return Reattach(START, None, f"its trainer exited 0 unwatched but left no adapter{how}: run again", found)
    if t.exit_code == EXIT_PREEMPTED:
        return Reattach(START, None, f"its trainer was preempted unwatched{how}: resume from the checkpoint", found)
    if t.exit_code is None:
        return Reattach(START, None, f"its trainer ended unwatched with no exit status{how}: resume", found)
    return Reattach(TAKE, t.exit_code, f"its trainer exited with status {t.exit_code} unwatched{how}", found)


def adapter_home(out: Path, run_id: str) -> bool:
    return EvalReport.finished(out, run_id) is not None
