"""The trainer's report of a finished run, `output_dir/eval.json`: written by the trainer, read by the daemon.

eval.json is written last, after final/ is in place, so its presence means the run is complete (preflight's
already_done). Plain data only: both the daemon and the trainer import this module, so no torch here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FILE = "eval.json"


@dataclass(frozen=True)
class Losses:
    """Token-mean losses before and after the run; None where a split was empty."""

    holdout_loss_before: float | None = None
    holdout_loss_after: float | None = None
    probe_loss_before: float | None = None  # earlier memories: a rise measures forgetting
    probe_loss_after: float | None = None


@dataclass(frozen=True)
class ExportCheck:
    ok: bool | None = None  # None: not checked (a full fine-tune is not an adapter)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalReport:
    run_id: str
    adapter: str
    method: str
    step: int
    final_dir: str
    eval: Losses = field(default_factory=Losses)
    tokens_per_s: float | None = None
    lr: float | None = None
    fisher: str | None = None
    fisher_samples: int = 0
    fisher_combined_with_prior: bool = False
    export: ExportCheck = field(default_factory=ExportCheck)

    def judged(self) -> dict[str, Any]:
        """What promotion.judge reads and the run's `eval` column keeps: the losses, throughput, the step."""
        return {**asdict(self.eval), "tokens_per_s": self.tokens_per_s, "step": self.step,
                "fisher_combined_with_prior": self.fisher_combined_with_prior}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["export"]["problems"] = list(self.export.problems)
        return out

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / FILE
        tmp = path.with_name(f".{FILE}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @staticmethod
    def from_dict(data: dict[str, Any]) -> EvalReport:
        data = dict(data)
        losses = Losses(**{f.name: data.get("eval", {}).get(f.name) for f in fields(Losses)})
        export = data.pop("export", None) or {}
        known = {f.name for f in fields(EvalReport)} - {"eval", "export"}
        return EvalReport(eval=losses, export=ExportCheck(export.get("ok"), tuple(export.get("problems", ()))),
                          **{k: v for k, v in data.items() if k in known})

    @staticmethod
    def read(out_dir: Path) -> EvalReport:
        return EvalReport.from_dict(json.loads((Path(out_dir) / FILE).read_text()))
