"""The trainer's entry point with the train extra installed: what a LoRA job's process loads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft", "bitsandbytes")),
    reason="the train extra (torch, transformers, peft, bitsandbytes) is not installed",
)

# What the trainer imports for a LoRA job, in a process of its own, as `python -m memwarden.training` does.
PROGRAM = """
import json, sys
from memwarden.training.__main__ import leave_out_bitsandbytes
leave_out_bitsandbytes(sys.argv[1], sys.modules)
import memwarden.training.trainer
from peft import LoraConfig, get_peft_model
print(json.dumps({"bitsandbytes": sys.modules.get("bitsandbytes") is not None,
                  "inductor": "torch._inductor.compile_fx" in sys.modules}))
"""


def loaded(method: str) -> dict[str, bool]:
    out = subprocess.run([sys.executable, "-c", PROGRAM, method], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_a_lora_job_loads_peft_without_bitsandbytes_or_torchs_compiler():
    assert loaded("lora") == {"bitsandbytes": False, "inductor": False}


def test_a_qlora_job_loads_bitsandbytes():
    assert loaded("qlora")["bitsandbytes"] is True
