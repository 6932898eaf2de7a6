"""A tiny offline base model: a randomly initialised Llama and a byte-level BPE tokenizer trained on the spot.

It lets the whole memory → training → adapter cycle run on any laptop and in the tests, with no network and no
download: `python -m memwarden.training.demo_model DIR` (or `build_demo_model(DIR)`) writes config.json,
model.safetensors, generation_config.json and the tokenizer files (with a chat template) into DIR, loadable with
AutoModelForCausalLM / AutoTokenizer.from_pretrained(DIR, local_files_only=True).

The files are as readable as DIR: a model root built with the usual umask (DIR 0755) has 0644 files, so the
service user can read it; a DIR made private (0700) keeps them private.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from dataclasses import asdict
from pathlib import Path

from memwarden.learning.jobspec import GENERAL_PROBE_FILE, GENERAL_REHEARSAL_FILE

BOS = "<|begin_of_text|>"
EOS = "<|eot|>"  # end of turn: generation stops here
PAD = "<|pad|>"
START_HEADER = "<|start_header|>"
END_HEADER = "<|end_header|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, START_HEADER, END_HEADER, "<|end_of_text|>")

# Llama-3 style turns. Each message ends with the end-of-turn token, so an assistant turn teaches the model to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header|>{{ message['role'] }}<|end_header|>\n\n{{ message['content'] | trim }}<|eot|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header|>assistant<|end_header|>\n\n{% endif %}"
)

PRETRAIN_FILE = "pretrain.json"  # how the base was pre-trained (steps, losses, seconds)
DEFAULT_PRETRAIN_STEPS = 600
CORPUS_DOCUMENTS = 20_000
PROBE_EXCHANGES = 200
REHEARSAL_EXCHANGES = 400


def build_demo_model(
    directory: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
    max_positions: int = 1024,
    initializer_range: float = 0.02,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    seed: int = 0,
) -> Path:
    """Build the tiny model and its tokenizer into `directory` (created if needed), pre-train it for
    `pretrain_steps` steps on the generated corpus, write the general probe and the general rehearsal beside it, and
    return the directory.

    0 pre-training steps leave the model as initialised: a base for tests of the machinery, not of learning.
    Widths are multiples of 64: bitsandbytes quantises each row in blocks of 64, so qlora needs them.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from memwarden.training import demo_corpus
    from memwarden.training.demo_pretrain import pretrain

    hf_logging.disable_progress_bar()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    docs = demo_corpus.documents(seed, CORPUS_DOCUMENTS)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(demo_corpus.tokenizer_text(docs), trainer=trainer)
    bos_id = bpe.token_to_id(BOS)
    # `tokenizer(text)` prepends BOS, as Llama's does; the chat template writes its own BOS.
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_positions,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.to(torch.float32)
    done = pretrain(model, tokenizer, docs, pretrain_steps, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    held_out = demo_corpus.probe(seed, PROBE_EXCHANGES, docs)
    for name, exchanges in ((GENERAL_PROBE_FILE, held_out),
                            (GENERAL_REHEARSAL_FILE, demo_corpus.rehearsal(seed, REHEARSAL_EXCHANGES, held_out))):
        (out / name).write_text("".join(json.dumps({"messages": m}) + "\n" for m in exchanges))
    (out / PRETRAIN_FILE).write_text(json.dumps(asdict(done), indent=1))
    share_like_directory(out)
    return out


def share_like_directory(directory: Path) -> None:
    """Give everything under `directory` at least the directory's own read bits (and search bits to subdirs).

    safetensors writes through a temporary file (mode 0600, whatever the umask): the weights came out private in
    a model root everyone else could list. The directory's mode is the caller's umask, or the caller's choice.
    """
    read = stat.S_IMODE(directory.stat().st_mode) & 0o444
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            path = Path(root, name)
            path.chmod(stat.S_IMODE(path.stat().st_mode) | read | read >> 2)
        for name in files:
            path = Path(root, name)
            path.chmod(stat.S_IMODE(path.stat().st_mode) | read)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memwarden.training.demo_model", description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="where to write the model (created if needed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--pretrain-steps", type=int, default=DEFAULT_PRETRAIN_STEPS)
    args = parser.parse_args(argv)
    out = build_demo_model(args.directory, seed=args.seed, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                           num_layers=args.layers, intermediate_size=args.hidden_size * 3,
                           pretrain_steps=args.pretrain_steps)
    print(json.dumps({"directory": str(out), "files": sorted(p.name for p in out.iterdir())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
