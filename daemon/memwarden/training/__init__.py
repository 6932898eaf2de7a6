"""The trainer subprocess: `python -m memwarden.training JOB.json` (the contract is memwarden/learning/jobspec.py).

This package is the only place torch, transformers, peft and bitsandbytes are imported; the daemon runs it as a
subprocess and reads its progress lines. Importing the package itself is cheap: the heavy imports happen in the
modules that need them (trainer, model, ewc, checkpoint, export, demo_model).

    __main__.py    the entry point: preflight (no torch), then the trainer
    preflight.py   spec validation and "already done" — decided before torch is imported
    data.py        JSONL → chat-template rendering → token ids with the loss masked to assistant tokens
    model.py       base model + tokenizer from a local directory; lora / qlora (4-bit NF4) / full
    ewc.py         online EWC: the penalty, this run's Fisher, the decayed combination with the prior
    checkpoint.py  atomic checkpoints (temp dir → os.replace), keep the last two, resume from the newest
    export.py      the final adapter (or full model), nothing else
    trainer.py     the loop: AdamW, cosine with warmup, accumulation, clipping, OOM back-off, preemption
    events.py      progress lines on a private copy of stdout (stray prints go to stderr)
    stop.py        SIGTERM/SIGINT set a flag that the loop checks between micro-steps
    demo_model.py  a tiny random Llama + byte-level BPE tokenizer built offline (`python -m …demo_model DIR`)
"""
