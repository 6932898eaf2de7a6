"""From a finished run to the adapter's active version, in Ollama too; and back to the version before.

finish(): the trainer's report (eval_report.py) is judged (promotion.py). A promoted run's final/ is copied to
`adapters/ADAPTER/vN` through a staging directory, then ONE transaction records the version, the promoted run
and the consolidated memories; only then is it exported to Ollama (`memwarden/ADAPTER:vN` and `:latest`) and
the versions beyond keep_versions pruned. rollback() makes the version before the active one active again.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from memwarden.config.schema import Config
from memwarden.learning import promotion
from memwarden.learning.eval_report import EvalReport
from memwarden.learning.runs import RunStore
from memwarden.learning.store import MemoryStore
from memwarden.learning.versions import VersionStore
from memwarden.logs import get_logger
from memwarden.ollama.client import OllamaClient, OllamaError
from memwarden.units import format_size

log = get_logger()

EXPORTED_FILES = ("adapter_model.safetensors", "adapter_config.json")


def ollama_name(adapter: str) -> str:
    """An Ollama model name for an adapter (lower case; '@' of profile-qualified adapters becomes '-')."""
    return "memwarden/" + re.sub(r"[^a-z0-9._-]+", "-", adapter.lower()).strip("-.")


# The verdict's own fields carry the share recalled ("recall"): these are the counts behind it.
RECALL_SHOWN = ("recall_recalled", "recall_memories", "recall_token_accuracy", "recall_heldout",
                "probe_recall_before", "probe_recall_after", "recall_before_dpo", "dpo_steps", "preference_pairs",
                "preference_heldout", "preference_accuracy_before", "preference_accuracy_after")


class Publisher:
    def __init__(self, config: Config, db: Any, runs: RunStore, versions: VersionStore, store: MemoryStore,
                 ollama: OllamaClient | None, versions_dir: Path, clock: Any):
        self.config = config
        self.db = db  # for the one transaction that spans runs, versions and memories
        self.runs = runs
        self.versions = versions
        self.store = store
        self.ollama = ollama
        self.versions_dir = versions_dir
        self.clock = clock

    async def finish(self, run_id: str, adapter: str, out: Path) -> bool:
        """Judge the run; promote and export it, or record why not. Whether it was promoted."""
        ev = EvalReport.read(out).judged()
        verdict = promotion.judge(ev, promotion.Gate.of(self.config.learning))
        log.info("decision: promote" if verdict.promote else "decision: keep the current version",
                 run=run_id, adapter=adapter, reason=verdict.reason, **verdict.log_fields(),
                 **{k: v for k, v in ev.items() if k.endswith(("_loss_before", "_loss_after"))},
                 **{k: ev.get(k) for k in RECALL_SHOWN}, step=ev.get("step"), stopped_early=ev.get("stopped_early"))
        now = self.clock()
        if not verdict.promote:
            self.runs.set_state(run_id, "rejected", eval=json.dumps(ev), reason=verdict.reason, finished_at=now)
            return False
        version = self.versions.next_number(adapter)
        target = self._install(out / "final", adapter, version)
        ids = self.runs.memory_ids(run_id)
        with self.db.atomic():
            self.versions.promote(adapter, version, run_id, str(target), now)
            self.runs.set_state(run_id, "promoted", promoted=1, version=version, eval=json.dumps(ev),
                                reason=verdict.reason, finished_at=now)
            marked = self.store.mark_consolidated(ids, run_id, now, conn=self.db)
        log.info("adapter version promoted", adapter=adapter, version=version, run=run_id, consolidated=marked,
                 path=str(target))
        await self._export(adapter, version, target)
        self._prune(adapter)
        return True

    def _install(self, final: Path, adapter: str, version: int) -> Path:
        target = self.versions_dir / adapter / f"v{version}"
        staging = target.with_name(f".v{version}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(final, staging)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # a disk full mid-copy: give back what the copy took
            raise
        if target.exists():  # left by a promotion whose transaction never committed
            shutil.rmtree(target)
        staging.replace(target)
        return target

    async def _export(self, adapter: str, version: int, path: Path) -> None:
        base = self.config.learning.ollama_base
        if self.ollama is None or not base or self.config.learning.method == "full":
            return
        from memwarden.learning.adapter_check import check_adapter

        problems = check_adapter(path, Path(self.config.learning.base_model)).problems
        if problems:
            log.warning("adapter not exported: Ollama cannot take it", adapter=adapter, version=version,
                        problems=problems)
            return
        name = ollama_name(adapter)
        try:
            files = {f.name: await self.ollama.push_blob(f) for f in sorted(path.iterdir())
                     if f.name in EXPORTED_FILES}
            await self.ollama.create(f"{name}:v{version}", base, files)
            await self.ollama.copy(f"{name}:v{version}", f"{name}:latest")
        except OllamaError as exc:
            log.error("adapter export to Ollama failed", adapter=adapter, version=version, error=str(exc))
            return
        self.versions.set_ollama_model(adapter, version, f"{name}:v{version}")
        log.info("adapter exported to Ollama", adapter=adapter, model=f"{name}:v{version}", alias=f"{name}:latest",
                 size=format_size(sum(f.stat().st_size for f in path.iterdir())))

    def _prune(self, adapter: str) -> None:
        for old in self.versions.beyond_keep(adapter, self.config.learning.keep_versions):
            shutil.rmtree(old.path, ignore_errors=True)
            self.versions.delete(adapter, old.version)

    async def rollback(self, adapter: str) -> dict[str, Any]:
        """Make the version before the active one active again (and Ollama's alias point at it)."""
        active = self.versions.active(adapter)
        if active is None:
            raise RuntimeError(f"{adapter} has no active version")
        prev = self.versions.previous(adapter, active.version)
        if prev is None:
            raise RuntimeError(f"{adapter} v{active.version} is its first version; nothing to roll back to")
        self.versions.activate(adapter, prev.version)
        if self.ollama is not None and prev.ollama_model:
            try:
                await self.ollama.copy(prev.ollama_model, f"{ollama_name(adapter)}:latest")
            except OllamaError as exc:
                log.error("could not point the Ollama alias back", adapter=adapter, error=str(exc))
        log.info("adapter rolled back", adapter=adapter, from_version=active.version, to=prev.version)
        return {"adapter": adapter, "active": prev.version, "was": active.version}
