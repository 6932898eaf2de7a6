"""The child processes of bench/continual_rounds.py, which import torch: an evaluation of recall and the general
probe with the base plus an adapter, and the concatenation of two adapters (its `stack` method)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from memwarden.learning.jobspec import GENERAL_PROBE_FILE


def evaluate(request_path: str) -> int:
    """Recall of each round's facts and the general-probe loss with the base plus an adapter (or none)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from memwarden.training.data import load_split
    from memwarden.training.evaluation import Evaluation
    from memwarden.training.model import Built, load_tokenizer
    from memwarden.training.recall import TRAINED, RecallMeter, load_items

    req = json.loads(Path(request_path).read_text())
    torch.set_num_threads(req["threads"])
    tok = load_tokenizer(req["base"])
    model = AutoModelForCausalLM.from_pretrained(req["base"], dtype=torch.float32, local_files_only=True)
    if req["adapter"]:
        model = PeftModel.from_pretrained(model, req["adapter"])
    built = Built(model, tok, torch.device("cpu"), None, {}, 0.0)
    meter = RecallMeter(built, req["max_new_tokens"], lambda: None)
    rows = []
    for path in req["recall_files"]:
        items = [i for i in load_items(path, tok, req["max_seq_len"], 1_000_000, 0) if i.wording == TRAINED]
        rows.append(dataclasses.asdict(meter.measure(items)))
    general = Evaluation(built, tok.pad_token_id, lambda: None).loss(
        load_split("general", req["general"], tok, req["max_seq_len"]), 8)
    print(json.dumps({"recall": rows, "general_loss": general}))
    return 0


def stack(request_path: str) -> int:
    """The promoted adapter so far concatenated with the round's new one ("cat": A's scaled in, alpha = rank, so
    the result is B1·s1·A1 + B2·s2·A2 exactly), and the base with it merged in: the next round's frozen base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from memwarden.training.model import load_tokenizer

    req = json.loads(Path(request_path).read_text())
    base, out, merged = req["base"], Path(req["out"]), Path(req["merged"])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    paths = [p for p in (req["previous"], req["new"]) if p]
    names = [f"a{n}" for n in range(len(paths))]
    model = PeftModel.from_pretrained(model, paths[0], adapter_name=names[0])
    for name, path in zip(names[1:], paths[1:], strict=True):
        model.load_adapter(path, adapter_name=name)
    model.add_weighted_adapter(names, [1.0] * len(names), "stacked", combination_type="cat")
    for name in names:
        model.delete_adapter(name)
    model.set_adapter("stacked")
    model.eval()  # the new adapter's dropout is created in training mode
    tmp = out.parent / (out.name + ".tmp")
    model.save_pretrained(tmp)
    (tmp / "stacked").rename(out) if (tmp / "stacked").is_dir() else tmp.rename(out)
    shutil.rmtree(tmp, ignore_errors=True)
    probe = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        via_adapter = model(input_ids=probe).logits
        flat = model.merge_and_unload()
        via_merge = flat(input_ids=probe).logits
    flat.save_pretrained(merged)
    load_tokenizer(base).save_pretrained(merged)
    for name in ("chat_template.jinja", GENERAL_PROBE_FILE):
        if (Path(base) / name).is_file():
            shutil.copy(Path(base) / name, merged / name)
    print(json.dumps({"max_abs_diff": float((via_adapter - via_merge).abs().max())}))
    return 0
