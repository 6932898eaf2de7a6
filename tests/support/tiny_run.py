"""The learning section of a daemon whose runs are tiny: real torch on the demo base, done in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASE = "demo:tiny"


def tiny_learning(demo_base: Path, **overrides: Any) -> dict[str, Any]:
    """24 steps of LoRA r 4 on the demo base (max_epochs 0: 24 whatever the memories) with a checkpoint every 4,
    triggered at once by importance 50; recall is measured but not required (min_recall 0), and neither
    forgetting nor the general probe rejects (a few exchanges learnt at a high learning rate cost the base much of
    its general ability): tests of the machinery set the gate they test."""
    return {"enabled": True, "base_model": str(demo_base), "ollama_base": BASE, "method": "lora",
            "importance_threshold": 50, "min_interval": "0s", "lr": 3e-3, "rank": 4, "alpha": 8, "max_steps": 24,
            "max_epochs": 0, "warmup_steps": 2, "micro_batch": 2, "grad_accum": 1, "max_seq_len": 64,
            "dry_run_steps": 2, "checkpoint_steps": 4, "min_recall": 0.0, "forgetting_epsilon": 10.0,
            "general_epsilon": 10.0, "lease_size": "2GiB",
            "device": "auto",
            **overrides}
