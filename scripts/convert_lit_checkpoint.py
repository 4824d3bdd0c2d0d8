"""Convert a training checkpoint or a lit checkpoint into a Hugging Face Llama model directory.

The output loads with ``AutoModelForCausalLM.from_pretrained`` and, when a tokenizer is known,
``AutoTokenizer.from_pretrained``, with nothing added by hand: config.json, generation_config.json,
model.safetensors (sharded with an index above ``--max_shard_size``) and the tokenizer files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from lit_gpt.cli import run
from lit_gpt.hf import write_hf_model
from lit_gpt.model import check_state_dict
from lit_gpt.weights import find_tokenizer, load_model_weights, read_model_config, write_atomically


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
        tokenizer_path: the tokenizer to include (tokenizer.json, tokenizer.model or a directory holding
            either); default: the copy the checkpoint carries.
        max_shard_size: bytes per safetensors file before the weights are split into several.
    """
    config = read_model_config(checkpoint_dir)
    weights = load_model_weights(checkpoint_dir)
    check_state_dict(weights, config, checkpoint_dir)
    tokenizer = find_tokenizer(checkpoint_dir, tokenizer_path)
    cast = getattr(torch, dtype) if dtype else None
    write_atomically(output_dir, lambda tmp: write_hf_model(tmp, weights, config, cast, tokenizer, max_shard_size))
    note = f" with tokenizer {tokenizer.path}" if tokenizer else " (no tokenizer known: pass --tokenizer_path)"
    print(f"Wrote a Hugging Face Llama model to {output_dir}{note}")


if __name__ == "__main__":
    run(convert_lit_checkpoint)
