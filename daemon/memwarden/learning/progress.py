"""The run in progress as the daemon sees it: which run, its trainer, its lease, what the trainer has said.

A long run emits one step event per optimizer step; only a bounded window of them is kept (StepHistory): the
first few, which are the throughput baseline of health.assess, and the most recent ones. Read by the status
RPC, the metrics collector and the health alerts, by attribute.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memwarden.learning.health import BASELINE_STEPS

if TYPE_CHECKING:
    from memwarden.learning.executor import Job
    from memwarden.learning.leasing import Granted

RECENT_STEPS = 256  # step events kept besides the baseline: enough for any trend a health check looks at
RATE_WINDOW = 20  # the steps an ETA is taken over: recent enough to follow a slowdown, enough to be steady
Event = Mapping[str, Any]


class StepHistory:
    """A phase's step events: the first BASELINE_STEPS + 1 (kept for the whole phase) and the RECENT_STEPS
    latest, oldest first; `seen` counts them all."""

    def __init__(self, recent: int = RECENT_STEPS, first: int = BASELINE_STEPS + 1):
        self.first: list[Event] = []
        self.recent: deque[Event] = deque(maxlen=recent)
        self._first_max = first
        self.seen = 0

    def append(self, event: Event) -> None:
        self.seen += 1
        if len(self.first) < self._first_max:
            self.first.append(event)
        self.recent.append(event)

    @property
    def last(self) -> Event | None:
        return self.recent[-1] if self.recent else None

    def __bool__(self) -> bool:
        return self.seen > 0


@dataclass
class CurrentRun:
    run_id: str
    adapter: str
    job: Job | None = None  # the trainer of the current phase, once started
    lease: Granted | None = None
    steps: StepHistory = field(default_factory=StepHistory)
    last: Event | None = None  # the trainer's latest event of any kind
    start: Event | None = None  # the phase's start event: how many steps it runs (metrics)
    # An operator's cancel stops the trainer the way a preemption does (checkpoint, exit 75): only this tells
    # the run's end apart, so that it is logged and recorded as a cancel.
    cancelling: bool = False
    cpu_fallback: bool = False  # the GPU was refused past learning.gpu_wait: the run trains on the CPU

    def new_phase(self) -> None:
        """A dry run and the real run are phases: progress counts from 0 in each."""
        self.steps = StepHistory()
        self.start = None

    def record(self, event: Event) -> None:
        self.last = event
        kind = event.get("event")
        if kind == "step":
            self.steps.append(event)
        elif kind == "start":
            self.start = event
        elif kind == "stage" and self.start is not None:
            # The DPO stage's steps count on from the supervised stage's end, so the phase now ends after them;
            # a step of the stage does other work than a supervised one, so its throughput is its own baseline.
            self.start = {**self.start, "steps": event["step"] + event["steps"]}
            self.steps = StepHistory()

    @property
    def dry_run(self) -> bool:
        return bool(self.start and self.start.get("dry_run"))

    def progress(self) -> dict[str, Any]:
        """Step N of M in this phase, the last step's numbers (`last` may be a checkpoint since) and the rate of
        the recent steps (the trainer's own timestamps): a percentage and an ETA without every event."""
        last = self.steps.last
        total = self.start.get("steps") if self.start else None
        window = list(self.steps.recent)[-RATE_WINDOW:]
        rate = None
        if len(window) >= 2 and window[-1].get("t") and window[0].get("t"):
            span = window[-1]["t"] - window[0]["t"]
            done = (window[-1].get("step") or 0) - (window[0].get("step") or 0)
            rate = done / span if span > 0 and done > 0 else None
        step = last.get("step") if last else None
        eta = None
        if rate and isinstance(total, int) and isinstance(step, int):
            eta = max(0, total - step) / rate
        return {"phase": "dry run" if self.dry_run else "training", "step": step, "steps": total,
                "loss": last.get("loss") if last else None, "tokens_per_s": last.get("tokens_per_s") if last else None,
                "steps_per_s": None if rate is None else round(rate, 3),
                "eta_s": None if eta is None else round(eta, 1)}

    @property
    def trainer_pid(self) -> int | None:
        return self.job.placement.pid if self.job is not None else None
