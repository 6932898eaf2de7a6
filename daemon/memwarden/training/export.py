"""The final artefact, and nothing else: output_dir/final/ holds

- lora/qlora: adapter_model.safetensors (the adapter named `default` at the top level, i.e. tensor names without
  an adapter segment) + adapter_config.json (`lora_alpha` an int) — no optimizer state, no checkpoint, no README;
- full: the model's weights (safetensors) + config + generation config + tokenizer;

plus fisher.safetensors (EWC) when one was computed. It is built in a temp directory and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from memwarden.learning.adapter_check import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from memwarden.training.ewc import save_fisher
from memwarden.training.model import ADAPTER_NAME

FISHER_FILE = "fisher.safetensors"


def _write_adapter(model: Any, out: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in state.items()},
        str(out / ADAPTER_WEIGHTS),
        metadata={"format": "pt"},
    )
    cfg = model.peft_config[ADAPTER_NAME]
    cfg.save_pretrained(str(out))  # writes adapter_config.json only (sets → lists, enums → strings)
    path = out / ADAPTER_CONFIG
    data = json.loads(path.read_text())
    alpha = data.get("lora_alpha")
    if isinstance(alpha, float) and alpha.is_integer():
        data["lora_alpha"] = int(alpha)
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    data["inference_mode"] = True
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _write_full(model: Any, tokenizer: Any, out: Path) -> None:
    model.config.use_cache = True
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    for extra in out.glob("README*"):
        extra.unlink()


def write_final(
    output_dir: Path, model: Any, tokenizer: Any, method: str, fisher: dict[str, torch.Tensor] | None
) -> Path:
    final = output_dir / "final"
    tmp = output_dir / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if method == "full":
        _write_full(model, tokenizer, tmp)
    else:
        _write_adapter(model, tmp)
    if fisher:
        save_fisher(fisher, tmp / FISHER_FILE)
    for child in tmp.iterdir():
        with child.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # left by a run that died between this rename and eval.json: it is rebuilt
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
