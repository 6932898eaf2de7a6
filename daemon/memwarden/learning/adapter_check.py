"""Can Ollama take this adapter? Checked from adapter_config.json and the safetensors header alone.

Ollama's adapter converter (`ollama create` with `ADAPTER`) reads a PEFT LoRA for a llama or gemma2 base: plain
lora_A/lora_B matrices, an integer `lora_alpha`. It cannot take DoRA (magnitude vectors), `modules_to_save`
(whole copied layers), other PEFT methods, quantized tensors, or another base architecture — and some of those
fail late or silently. This module finds each such problem before an upload, reading only JSON and the
safetensors header (8-byte little-endian length, then a JSON table of tensors): no torch, so the daemon can call it.

    report = check_adapter(final_dir, base_model_dir)   # AdapterReport: .ok, .problems, .tensors, …
    require_exportable(final_dir, base_model_dir)       # raises AdapterRefused naming every problem
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# What Ollama converts adapters for (convert.go: LlamaForCausalLM → llamaAdapter, Gemma2ForCausalLM → gemma2Adapter)
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Gemma2ForCausalLM": "gemma2"}
SUPPORTED_MODEL_TYPES = frozenset(SUPPORTED_ARCHITECTURES.values())
SUPPORTED_DTYPES = frozenset({"F32", "F16", "BF16"})
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit; a larger length means a corrupt or foreign file

_LORA_TENSOR = re.compile(r"\.lora_(A|B)\.weight$")
_NAMED_ADAPTER_TENSOR = re.compile(r"\.lora_(A|B)\.([^.]+)\.weight$")


class AdapterRefused(ValueError):
    """The adapter cannot be exported to Ollama; `problems` lists every reason."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        super().__init__(f"{path}: Ollama cannot take this adapter: " + "; ".join(self.problems))


@dataclass
class AdapterReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    architecture: str | None = None  # the base's architectures[0] (or model_type) when known
    model_type: str | None = None
    rank: int | None = None
    alpha: int | float | None = None
    target_modules: list[str] = field(default_factory=list)
    tensors: int = 0
    parameters: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}."""
    path = Path(path)
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length == 0 or length > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors file (header length {length})")
        body = fh.read(length)
    if len(body) != length:
        raise ValueError(f"{path}: truncated safetensors header ({len(body)} of {length} bytes)")
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: safetensors header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    data_end = 8 + length + max(
        (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)),
        default=0,
    )
    if path.stat().st_size < data_end:
        raise ValueError(f"{path}: truncated: the header promises {data_end} bytes, the file has {path.stat().st_size}")
    return header


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _base_config_path(adapter_cfg: dict[str, Any], base_model_dir: str | Path | None) -> Path | None:
    if base_model_dir is not None:
        return Path(base_model_dir) / "config.json"
    named = adapter_cfg.get("base_model_name_or_path")
    if isinstance(named, str) and named and (Path(named) / "config.json").is_file():
        return Path(named) / "config.json"
    return None


def check_base_model(base_model_dir: str | Path) -> tuple[str | None, str | None, list[str]]:
    """(architecture, model_type, problems) of a base model directory's config.json."""
    path = Path(base_model_dir) / "config.json"
    if not path.is_file():
        return None, None, [f"base model config {path} does not exist"]
    try:
        cfg = _read_json(path)
    except ValueError as exc:
        return None, None, [str(exc)]
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    model_type = cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else None
    ok = arch in SUPPORTED_ARCHITECTURES if arch is not None else model_type in SUPPORTED_MODEL_TYPES
    problems = []
    if not ok:
        problems.append(
            f"base architecture {arch or model_type or 'unknown'} is not supported for adapters by Ollama "
            f"(only {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
        )
    return arch, model_type, problems


def check_adapter(adapter_dir: str | Path, base_model_dir: str | Path | None = None) -> AdapterReport:
    """Every reason Ollama would refuse (or mis-read) the PEFT adapter in `adapter_dir`.

    The base's architecture is read from `base_model_dir`/config.json, else from the adapter's
    `base_model_name_or_path` when that is a local directory; when neither is available that check is skipped.
    """
    root = Path(adapter_dir)
    report = AdapterReport(path=root)
    problems = report.problems
    cfg_path, weights_path = root / ADAPTER_CONFIG, root / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        problems.append(f"{ADAPTER_CONFIG} is missing")
    if not weights_path.is_file():
        bin_note = " (adapter_model.bin is not accepted: save with safetensors)"
        problems.append(f"{ADAPTER_WEIGHTS} is missing" + (bin_note if (root / "adapter_model.bin").exists() else ""))
    if problems:
        return report

    try:
        cfg = _read_json(cfg_path)
    except ValueError as exc:
        problems.append(str(exc))
        return report

    peft_type = cfg.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != "LORA":
        problems.append(f"peft_type {peft_type} is not LORA")
    if cfg.get("use_dora"):
        problems.append("DoRA (use_dora: true) is not supported by Ollama")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} (whole copied layers) is not supported by Ollama")
    alpha = cfg.get("lora_alpha")
    report.alpha = alpha
    if isinstance(alpha, bool) or not isinstance(alpha, int):
        problems.append(f"lora_alpha must be an integer, got {alpha!r}")
    rank = cfg.get("r")
    report.rank = rank if isinstance(rank, int) and not isinstance(rank, bool) else None
    if report.rank is None or report.rank < 1:
        problems.append(f"r (the rank) must be a positive integer, got {rank!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            problems.append(f"{key} (per-module ranks or alphas) is not supported by Ollama")
    targets = cfg.get("target_modules")
    report.target_modules = sorted(targets) if isinstance(targets, list) else ([targets] if targets else [])

    try:
        header = read_safetensors_header(weights_path)
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
        header = {}
    dora, copied, named, foreign, dtypes = [], [], [], [], set()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        report.tensors += 1
        if isinstance(info, dict):
            shape = info.get("shape") or []
            count = 1
            for dim in shape:
                count *= int(dim)
            report.parameters += count
            if info.get("dtype") not in SUPPORTED_DTYPES:
                dtypes.add(str(info.get("dtype")))
        if "lora_magnitude_vector" in name:
            dora.append(name)
        elif "modules_to_save" in name:
            copied.append(name)
        elif _LORA_TENSOR.search(name):
            continue
        elif _NAMED_ADAPTER_TENSOR.search(name):
            named.append(name)
        else:
            foreign.append(name)
    if dora and not cfg.get("use_dora"):
        problems.append(f"DoRA magnitude tensors present ({len(dora)}, e.g. {dora[0]}): not supported by Ollama")
    if copied:
        problems.append(f"modules_to_save tensors present ({len(copied)}, e.g. {copied[0]}): not supported by Ollama")
    if named:
        problems.append(
            f"tensors carry an adapter name ({len(named)}, e.g. {named[0]}): "
            "save the adapter as 'default' at the top level"
        )
    if foreign:
        problems.append(f"tensors that are not LoRA A/B matrices ({len(foreign)}, e.g. {foreign[0]})")
    if dtypes:
        problems.append(f"tensor dtypes {sorted(dtypes)} are not F32/F16/BF16 (quantized or foreign tensors)")
    if header and report.tensors == 0:
        problems.append(f"{ADAPTER_WEIGHTS} holds no tensors")

    base_cfg = _base_config_path(cfg, base_model_dir)
    if base_cfg is not None:
        report.architecture, report.model_type, base_problems = check_base_model(base_cfg.parent)
        problems.extend(base_problems)
    return report


def require_exportable(adapter_dir: str | Path, base_model_dir: str | Path | None = None) -> AdapterReport:
    """check_adapter, raising AdapterRefused (every problem in the message) unless Ollama can take it."""
    report = check_adapter(adapter_dir, base_model_dir)
    if not report.ok:
        raise AdapterRefused(report.path, report.problems)
    return report
