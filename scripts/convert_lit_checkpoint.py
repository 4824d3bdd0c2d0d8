"""Convert a training checkpoint or a lit checkpoint into a Hugging Face Llama model directory.

The output loads with ``AutoModelForCausalLM.from_pretrained`` and, when a tokenizer is known,
``AutoTokenizer.from_pretrained``, with nothing added by hand: config.json, generation_config.json,
model.safetensors (sharded with an index above ``--max_shard_size``) and the tokenizer files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import CLI

from lit_gpt import Tokenizer
from lit_gpt.checkpoint import (
    check_state_dict,
    find_tokenizer,
    hf_llama_config,
    lit_to_hf,
    load_model_weights,
    read_model_config,
    save_hf_weights,
    write_atomically,
)


def tokenizer_config(tokenizer: Tokenizer, model_max_length: int) -> dict:
    processor = tokenizer.processor
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": processor.id_to_piece(tokenizer.bos_id),
        "eos_token": processor.id_to_piece(tokenizer.eos_id),
        "unk_token": processor.id_to_piece(processor.unk_id()),
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "add_prefix_space": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }


def write_fast_tokenizer(directory: Path) -> None:
    """Add tokenizer.json, so that loading the tokenizer needs neither sentencepiece nor protobuf.

    Building it takes transformers and protobuf (``pip install -e '.[hf]'``); without them the directory
    keeps tokenizer.model, which AutoTokenizer converts when it loads it (then needing both).
    """
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(directory).save_pretrained(directory)
    except (ImportError, ValueError) as error:
        print(f"Note: no tokenizer.json written ({error.__class__.__name__}: {str(error).splitlines()[0]})")


def convert_lit_checkpoint(
    checkpoint_dir: Path,
    output_dir: Path,
    dtype: Literal["bfloat16", "float16", "float32"] | None = None,
    tokenizer_path: Path | None = None,
    max_shard_size: int = 5 * 2**30,
) -> None:
    """Write a Hugging Face Llama directory for ``checkpoint_dir``.

    Args:
        checkpoint_dir: a training checkpoint (out_dir/step-XXXXXXXX, sharded or not) or a lit
            checkpoint directory (scripts/convert_hf_checkpoint.py).
        output_dir: the directory to create (must not exist or be empty); it appears complete or not at all.
        dtype: the weights' dtype in the output; default: as stored (fp32 for training checkpoints).
        tokenizer_path: the SentencePiece tokenizer to include; default: the checkpoint's own, or the
            one recorded by its training run.
        max_shard_size: bytes per safetensors file before the weights are split into several.
    """
    config = read_model_config(checkpoint_dir)
    weights = load_model_weights(checkpoint_dir)
    check_state_dict(weights, config, checkpoint_dir)
    hf_weights = lit_to_hf(weights, config)
    cast = getattr(torch, dtype) if dtype else None
    stored = next(iter(weights.values())).dtype
    tokenizer = find_tokenizer(checkpoint_dir, tokenizer_path)

    def write(directory: Path) -> None:
        save_hf_weights(hf_weights, directory, cast, max_shard_size)
        hf_config = hf_llama_config(config, cast or stored)
        (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
        generation = {"bos_token_id": 1, "eos_token_id": 2}
        (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
        if tokenizer is not None:
            shutil.copy(tokenizer.path, directory / "tokenizer.model")
            (directory / "tokenizer_config.json").write_text(
                json.dumps(tokenizer_config(tokenizer, config.block_size), indent=2)
            )
            write_fast_tokenizer(directory)

    write_atomically(output_dir, write)
    note = f" with tokenizer {tokenizer.path}" if tokenizer else " (no tokenizer known: pass --tokenizer_path)"
    print(f"Wrote a Hugging Face Llama model to {output_dir}{note}")


if __name__ == "__main__":
    CLI(convert_lit_checkpoint, as_positional=False)
