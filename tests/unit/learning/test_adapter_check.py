"""adapter_check reads adapter_config.json and the safetensors header only: hand-written files, no torch."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memwarden.learning.adapter_check import (
    AdapterRefused,
    check_adapter,
    check_base_model,
    read_safetensors_header,
    require_exportable,
)

PREFIX = "base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{ab}.weight"


def lora_tensors(rank: int = 8, hidden: int = 64, dtype: str = "F32") -> dict[str, tuple[str, list[int]]]:
    out = {}
    for i in range(2):
        for m in ("q", "v"):
            out[PREFIX.format(i=i, m=m, ab="A")] = (dtype, [rank, hidden])
            out[PREFIX.format(i=i, m=m, ab="B")] = (dtype, [hidden, rank])
    return out


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, pad: bool = True) -> None:
    """A valid safetensors layout: u64 header length, JSON header, then zeroed tensor bytes."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + (b"\0" * offset if pad else b""))


def adapter_config(**overrides: Any) -> dict[str, Any]:
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
        "use_dora": False,
        "modules_to_save": None,
        "bias": "none",
        "base_model_name_or_path": None,
    }
    cfg.update(overrides)
    return cfg


def make_adapter(root: Path, config: dict[str, Any] | None = None, tensors=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(json.dumps(config if config is not None else adapter_config()))
    write_safetensors(root / "adapter_model.safetensors", tensors if tensors is not None else lora_tensors())
    return root


def make_base(root: Path, architectures: list[str] | None, model_type: str | None = "llama") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"hidden_size": 64}
    if architectures is not None:
        cfg["architectures"] = architectures
    if model_type is not None:
        cfg["model_type"] = model_type
    (root / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture
def llama(tmp_path) -> Path:
    return make_base(tmp_path / "base", ["LlamaForCausalLM"])


def test_a_plain_lora_on_llama_is_exportable(tmp_path, llama):
    report = require_exportable(make_adapter(tmp_path / "a"), llama)
    assert report.ok and report.problems == []
    assert (report.architecture, report.model_type) == ("LlamaForCausalLM", "llama")
    assert (report.rank, report.alpha, report.tensors) == (8, 16, 8)
    assert report.parameters == 8 * 8 * 64
    assert report.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("architectures", "model_type", "ok"),
    [
        (["Gemma2ForCausalLM"], "gemma2", True),
        (None, "llama", True),  # no architectures: model_type decides
        (None, "gemma2", True),
        (["Qwen2ForCausalLM"], "qwen2", False),
        (["MistralForCausalLM"], "mistral", False),
        (["GemmaForCausalLM"], "gemma", False),
        (None, None, False),
    ],
)
def test_only_llama_and_gemma2_bases(tmp_path, architectures, model_type, ok):
    base = make_base(tmp_path / "base", architectures, model_type)
    report = check_adapter(make_adapter(tmp_path / "a"), base)
    assert report.ok is ok
    if not ok:
        (problem,) = report.problems
        assert "not supported for adapters by Ollama" in problem
        assert (architectures or [model_type or "unknown"])[0] in problem


def test_the_base_is_found_through_base_model_name_or_path(tmp_path):
    base = make_base(tmp_path / "qwen", ["Qwen2ForCausalLM"], "qwen2")
    adapter = make_adapter(tmp_path / "a", adapter_config(base_model_name_or_path=str(base)))
    assert "Qwen2ForCausalLM" in check_adapter(adapter).problems[0]
    # a Hub name that is not a local directory: the base check is skipped, not failed
    adapter = make_adapter(tmp_path / "b", adapter_config(base_model_name_or_path="meta-llama/Llama-3.2-1B"))
    assert check_adapter(adapter).ok


def test_a_missing_base_config_is_a_problem(tmp_path):
    report = check_adapter(make_adapter(tmp_path / "a"), tmp_path / "nowhere")
    assert any("does not exist" in p for p in report.problems)
    assert check_base_model(tmp_path / "nowhere")[2]


def test_dora_is_refused_from_the_config_and_from_the_tensors(tmp_path, llama):
    report = check_adapter(make_adapter(tmp_path / "a", adapter_config(use_dora=True)), llama)
    assert report.problems == ["DoRA (use_dora: true) is not supported by Ollama"]
    magnitude = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    tensors = {**lora_tensors(), magnitude: ("F32", [64])}
    report = check_adapter(make_adapter(tmp_path / "b", tensors=tensors), llama)
    assert len(report.problems) == 1 and "DoRA magnitude tensors" in report.problems[0]


def test_modules_to_save_is_refused_from_the_config_and_from_the_tensors(tmp_path, llama):
    report = check_adapter(make_adapter(tmp_path / "a", adapter_config(modules_to_save=["lm_head"])), llama)
    assert len(report.problems) == 1 and "modules_to_save ['lm_head']" in report.problems[0]
    tensors = {**lora_tensors(), "base_model.model.lm_head.modules_to_save.default.weight": ("F32", [512, 64])}
    report = check_adapter(make_adapter(tmp_path / "b", tensors=tensors), llama)
    assert len(report.problems) == 1 and "modules_to_save tensors present (1" in report.problems[0]


@pytest.mark.parametrize("alpha", [16.0, 16.5, "16", True, None])
def test_lora_alpha_must_be_an_int(tmp_path, llama, alpha):
    report = check_adapter(make_adapter(tmp_path / "a", adapter_config(lora_alpha=alpha)), llama)
    assert report.problems == [f"lora_alpha must be an integer, got {alpha!r}"]


def test_other_peft_methods_and_per_module_ranks_are_refused(tmp_path, llama):
    cfg = adapter_config(peft_type="IA3", rank_pattern={"q_proj": 4}, r=0)
    problems = check_adapter(make_adapter(tmp_path / "a", cfg), llama).problems
    assert any("peft_type IA3" in p for p in problems)
    assert any("rank_pattern" in p for p in problems)
    assert any("r (the rank)" in p for p in problems)


def test_tensors_under_an_adapter_name_or_foreign_or_quantized_are_refused(tmp_path, llama):
    named = {k.replace(".weight", ".mine.weight"): v for k, v in lora_tensors().items()}
    problems = check_adapter(make_adapter(tmp_path / "a", tensors=named), llama).problems
    assert len(problems) == 1 and "adapter name" in problems[0] and "'default'" in problems[0]

    foreign = {**lora_tensors(), "base_model.model.model.embed_tokens.weight": ("F32", [512, 64])}
    problems = check_adapter(make_adapter(tmp_path / "b", tensors=foreign), llama).problems
    assert len(problems) == 1 and "not LoRA A/B matrices" in problems[0]

    problems = check_adapter(make_adapter(tmp_path / "c", tensors=lora_tensors(dtype="U8")), llama).problems
    assert problems == ["tensor dtypes ['U8'] are not F32/F16/BF16 (quantized or foreign tensors)"]

    assert check_adapter(make_adapter(tmp_path / "d", tensors=lora_tensors(dtype="BF16")), llama).ok


def test_missing_files(tmp_path, llama):
    root = tmp_path / "a"
    root.mkdir()
    (root / "adapter_model.bin").write_bytes(b"pickle")
    problems = check_adapter(root, llama).problems
    assert problems == [
        "adapter_config.json is missing",
        "adapter_model.safetensors is missing (adapter_model.bin is not accepted: save with safetensors)",
    ]


def test_a_corrupt_or_truncated_safetensors_is_a_problem_not_a_crash(tmp_path, llama):
    root = make_adapter(tmp_path / "a")
    weights = root / "adapter_model.safetensors"
    weights.write_bytes(b"\x01\x02")
    assert "shorter than its 8-byte header" in check_adapter(root, llama).problems[0]
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    assert "header length" in check_adapter(root, llama).problems[0]
    weights.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    assert "not JSON" in check_adapter(root, llama).problems[0]
    write_safetensors(weights, lora_tensors(), pad=False)
    assert "truncated" in check_adapter(root, llama).problems[0]
    (root / "adapter_config.json").write_text("{nope")
    assert "not JSON" in check_adapter(root, llama).problems[0]


def test_require_exportable_names_every_problem(tmp_path):
    base = make_base(tmp_path / "base", ["Qwen2ForCausalLM"], "qwen2")
    adapter = make_adapter(tmp_path / "a", adapter_config(use_dora=True, lora_alpha=32.0))
    with pytest.raises(AdapterRefused) as info:
        require_exportable(adapter, base)
    assert len(info.value.problems) == 3
    message = str(info.value)
    assert message.startswith(f"{adapter}: Ollama cannot take this adapter: ")
    for word in ("DoRA", "lora_alpha", "Qwen2ForCausalLM"):
        assert word in message


def test_header_reader_returns_the_tensor_table(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"a": ("F16", [2, 3])})
    header = read_safetensors_header(path)
    assert header["a"] == {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]}
    assert header["__metadata__"] == {"format": "pt"}


def test_checking_imports_no_heavy_module(tmp_path, llama):
    """The daemon calls this: a fresh interpreter that imports and runs it loads no torch & co."""
    adapter = make_adapter(tmp_path / "a")
    code = (
        "import sys; from memwarden.learning.adapter_check import check_adapter; "
        f"assert check_adapter({str(adapter)!r}, {str(llama)!r}).ok; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'transformers', 'peft', 'bitsandbytes', 'accelerate', 'safetensors', 'numpy'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
