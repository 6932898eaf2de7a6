"""The model a job trains: the local base, and on it a LoRA adapter (lora), a LoRA on a 4-bit NF4 base (qlora),
or every weight (full). Nothing is fetched from the Hub: every load is `local_files_only`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memwarden.learning.jobspec import FULL_FT_LR_RANGE, JobSpec
from memwarden.training.preflight import METHODS

ADAPTER_NAME = "default"
_ADAPTER_SEGMENT = re.compile(rf"\.{ADAPTER_NAME}(?=\.)")


@dataclass
class Built:
    model: Any
    tokenizer: Any
    device: torch.device
    autocast_dtype: torch.dtype | None  # mixed precision on CUDA, None on CPU
    params: dict[str, torch.nn.Parameter]  # trainable parameters by stable key (the adapter file's tensor names)
    lr: float
    clamp: dict[str, Any] | None = None  # the lr clamp applied to a full fine-tune, for the "clamp" event
    notes: list[str] = field(default_factory=list)
    quantized_layers: int = 0  # bitsandbytes Linear4bit modules in the base (qlora)

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")


def param_key(name: str, peft: bool) -> str:
    """A trainable parameter's stable key: the adapter file's tensor name (PEFT's adapter name removed)."""
    return _ADAPTER_SEGMENT.sub("", name) if peft else name


def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but CUDA is not available to torch")
        return torch.device(requested if ":" in requested else "cuda:0")
    raise ValueError(f"device must be cpu or cuda, got {requested!r}")


def clamp_lr(method: str, lr: float) -> tuple[float, dict[str, Any] | None]:
    if method != "full":
        return lr, None
    low, high = FULL_FT_LR_RANGE
    used = min(max(lr, low), high)
    if used == lr:
        return lr, None
    return used, {"what": "lr", "requested": lr, "used": used, "range": [low, high]}


def load_tokenizer(base_model: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
    if tok.pad_token_id is None:  # many bases have none; padding positions are masked out anyway
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


def build(spec: JobSpec) -> Built:
    from transformers import AutoModelForCausalLM

    if spec.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {spec.method!r}")
    device = resolve_device(spec.device)
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    autocast = torch.bfloat16 if bf16 else None
    tokenizer = load_tokenizer(spec.base_model)
    notes: list[str] = []
    hyper = spec.hyper

    common: dict[str, Any] = {"local_files_only": True}
    if spec.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )
        model = AutoModelForCausalLM.from_pretrained(
            spec.base_model,
            quantization_config=quant,
            dtype=torch.bfloat16 if bf16 else torch.float32,
            device_map={"": device.index if cuda else "cpu"},
            **common,
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cuda, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        # LoRA keeps the frozen base in bf16 on a GPU (the adapter itself stays fp32); a full fine-tune keeps fp32
        # master weights and runs the matmuls under bf16 autocast.
        dtype = torch.bfloat16 if (bf16 and spec.method == "lora") else torch.float32
        source = spec.base_model
        if spec.method == "full" and spec.init_adapter:
            source = spec.init_adapter  # a full run continues from the promoted full model
            notes.append(f"full fine-tune continues from {spec.init_adapter}")
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **common)
        model.to(device)
    model.config.use_cache = False

    if spec.method in ("lora", "qlora"):
        from peft import LoraConfig, PeftModel, get_peft_model

        if spec.init_adapter:
            model = PeftModel.from_pretrained(model, spec.init_adapter, adapter_name=ADAPTER_NAME, is_trainable=True)
            cfg = model.peft_config[ADAPTER_NAME]
            if cfg.r != hyper.rank or cfg.lora_alpha != hyper.alpha:
                notes.append(f"init_adapter has r={cfg.r} alpha={cfg.lora_alpha}: it keeps its own shape")
        else:
            cfg = LoraConfig(
                r=hyper.rank,
                lora_alpha=int(hyper.alpha),
                lora_dropout=hyper.dropout,
                target_modules=list(hyper.target_modules),
                bias="none",
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, cfg, adapter_name=ADAPTER_NAME)
        if spec.method == "lora":
            model.to(device)
    else:
        for p in model.parameters():
            p.requires_grad_(True)

    peft = hasattr(model, "peft_config")
    params = {param_key(n, peft): p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise RuntimeError("the model has no trainable parameters (do target_modules name modules of this model?)")
    lr, clamp = clamp_lr(spec.method, hyper.lr)
    quantized = 0
    if spec.method == "qlora":
        import bitsandbytes as bnb

        quantized = sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
        if not quantized:
            raise RuntimeError("qlora: bitsandbytes quantized no layer of the base model to 4 bits")
    model.train()
    return Built(model, tokenizer, device, autocast, params, lr, clamp, notes, quantized)


# ---- the device at run time -----------------------------------------------------------------------------


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)
