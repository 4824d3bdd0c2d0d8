"""Convert a Hugging Face Llama model directory into a lit checkpoint directory.

The output holds ``model.safetensors`` (Lit-GPT names, q/k/v fused), ``model_config.json`` and the
tokenizer files the source has (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
``tokenizer.model``): what ``pretrain/tinyllama.py --initial_checkpoint``,
``scripts/generate.py`` and ``scripts/convert_lit_checkpoint.py`` read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from lit_gpt.cli import run
from lit_gpt.hf import read_hf_model
from lit_gpt.tokenizer import TOKENIZER_FILES
from lit_gpt.weights import write_atomically


def convert_hf_checkpoint(
    checkpoint_dir: Path, output_dir: Path, dtype: Literal["bfloat16", "float16", "float32"] | None = None
) -> None:
    """Convert ``checkpoint_dir`` (config.json + safetensors or pytorch_model*.bin) into ``output_dir``.

    Args:
        checkpoint_dir: a Hugging Face LlamaForCausalLM directory, e.g. TinyLlama/TinyLlama_v1.1.
        output_dir: the lit checkpoint directory to create (must not exist or be empty).
        dtype: cast the weights; default: keep the stored dtype.
    """
    config, state_dict = read_hf_model(checkpoint_dir)
    cast = getattr(torch, dtype) if dtype else None

    def write(directory: Path) -> None:
        stored = {k: v.to(cast or v.dtype).contiguous() for k, v in state_dict.items()}
        save_file(stored, directory / "model.safetensors")
        (directory / "model_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        for name in TOKENIZER_FILES:
            if (checkpoint_dir / name).is_file():
                shutil.copy(checkpoint_dir / name, directory / name)

    write_atomically(output_dir, write)
    print(f"Wrote a lit checkpoint of {sum(t.numel() for t in state_dict.values()):,} parameters to {output_dir}")


if __name__ == "__main__":
    run(convert_hf_checkpoint)
