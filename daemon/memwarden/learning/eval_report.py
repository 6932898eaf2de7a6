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
    general_loss_before: float | None = None  # the base's general-text probe: a rise measures lost ability
    general_loss_after: float | None = None


@dataclass(frozen=True)
class Recall:
    """Greedy recall of a set of memories (learning/recall_score.py): how many were decoded and given back, and
    the mean teacher-forced token accuracy of their responses; `memories` 0 where nothing was decoded (an
    early-stop check whose token accuracy was too low to decode, training/recall.py, keeps its accuracy). The
    memories are asked for in a wording they were trained on; `heldout_*` is the same measure on a wording of
    their cue that was never trained (learning/cues.py), where the recall file has one."""

    memories: int = 0
    recalled: int = 0
    token_accuracy: float | None = None
    heldout_memories: int = 0
    heldout_recalled: int = 0
    heldout_token_accuracy: float | None = None

    @property
    def fraction(self) -> float | None:
        return self.recalled / self.memories if self.memories else None

    @property
    def heldout_fraction(self) -> float | None:
        return self.heldout_recalled / self.heldout_memories if self.heldout_memories else None

    def flat(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}": self.fraction, f"{prefix}_recalled": self.recalled,
                f"{prefix}_memories": self.memories, f"{prefix}_token_accuracy": self.token_accuracy}

    def heldout_flat(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}": self.heldout_fraction, f"{prefix}_recalled": self.heldout_recalled,
                f"{prefix}_memories": self.heldout_memories, f"{prefix}_token_accuracy": self.heldout_token_accuracy}

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> Recall:
        data = data or {}
        return Recall(int(data.get("memories") or 0), int(data.get("recalled") or 0), data.get("token_accuracy"),
                      int(data.get("heldout_memories") or 0), int(data.get("heldout_recalled") or 0),
                      data.get("heldout_token_accuracy"))


@dataclass(frozen=True)
class Preference:
    """The DPO stage (training/dpo.py): `pairs` preference pairs trained for `steps` steps at `beta`, and the
    share of the `heldout` pairs (never trained by DPO) whose chosen reply the model gives a higher log-probability
    than the rejected one, before and after the stage; `recall_before` is this run's recall as the supervised
    stage left it (the report's `recall` is after the stage). `steps` 0: no DPO stage."""

    pairs: int = 0
    heldout: int = 0
    steps: int = 0
    beta: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    recall_before: Recall = field(default_factory=Recall)

    def flat(self) -> dict[str, Any]:
        return {"dpo_steps": self.steps, "preference_pairs": self.pairs, "preference_heldout": self.heldout,
                "preference_accuracy_before": self.accuracy_before,
                "preference_accuracy_after": self.accuracy_after, **self.recall_before.flat("recall_before_dpo")}

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> Preference:
        data = dict(data or {})
        recall = Recall.from_dict(data.pop("recall_before", None))
        known = {f.name for f in fields(Preference)} - {"recall_before"}
        return Preference(recall_before=recall, **{k: v for k, v in data.items() if k in known})


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
    recall: Recall = field(default_factory=Recall)  # this run's new memories, after training
    probe_recall_before: Recall = field(default_factory=Recall)  # earlier rounds' memories
    probe_recall_after: Recall = field(default_factory=Recall)
    stopped_early: bool = False  # recall reached hyper.min_recall before max_steps
    preference: Preference = field(default_factory=Preference)  # the DPO stage, when the run had one

    def judged(self) -> dict[str, Any]:
        """What promotion.judge reads and the run's `eval` column keeps: the losses, recall, the DPO stage's
        figures, throughput, the step."""
        return {**asdict(self.eval), **self.recall_fields(), **self.preference.flat(),
                "tokens_per_s": self.tokens_per_s, "step": self.step, "stopped_early": self.stopped_early,
                "fisher_combined_with_prior": self.fisher_combined_with_prior}

    def recall_fields(self) -> dict[str, Any]:
        """recall, recall_recalled, recall_memories, recall_token_accuracy, the same for recall_heldout (this
        run's memories in a held-out wording), probe_recall_before and probe_recall_after."""
        return {**self.recall.flat("recall"), **self.recall.heldout_flat("recall_heldout"),
                **self.probe_recall_before.flat("probe_recall_before"),
                **self.probe_recall_after.flat("probe_recall_after")}

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
        recalls = {name: Recall.from_dict(data.pop(name, None))
                   for name in ("recall", "probe_recall_before", "probe_recall_after")}
        preference = Preference.from_dict(data.pop("preference", None))
        known = {f.name for f in fields(EvalReport)} - {"eval", "export"}
        return EvalReport(eval=losses, export=ExportCheck(export.get("ok"), tuple(export.get("problems", ()))),
                          preference=preference, **recalls, **{k: v for k, v in data.items() if k in known})

    @staticmethod
    def read(out_dir: Path) -> EvalReport:
        return EvalReport.from_dict(json.loads((Path(out_dir) / FILE).read_text()))

    @staticmethod
    def finished(out_dir: Path, run_id: str) -> EvalReport | None:
        """The report of run `run_id` if it finished in `out_dir` (final/ and its eval.json in place), else None.
        eval.json is written last, after final/ is renamed into place, so its presence means the run is complete."""
        out = Path(out_dir)
        if not ((out / FILE).is_file() and (out / "final").is_dir()):
            return None
        try:
            report = EvalReport.read(out)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):  # torn or foreign: not a result
            return None
        return report if report.run_id == run_id else None
