"""Model weights on disk: reading them from a lit or training checkpoint (or a Hugging Face directory)
into one process, and writing a converted checkpoint directory atomically.

A lit checkpoint is ``model.safetensors`` + ``model_config.json`` (+ the tokenizer's files: ``tokenizer.json``
and its companions, or ``tokenizer.model``): what conversion
from Hugging Face writes. A training checkpoint (``lit_gpt.checkpoint``) holds the model sharded by
torch.distributed.checkpoint, written by any number of ranks; ``load_model_weights`` reads it whole.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from lit_gpt.config import Config
from lit_gpt.errors import InvalidInput, MissingInput, OutputExists
from lit_gpt.hf import read_hf_model
from lit_gpt.model import GPT, check_state_dict
from lit_gpt.tokenizer import HF_FILE, SENTENCEPIECE_FILE, Tokenizer


def read_model_config(checkpoint_dir: Path) -> Config:
    path = checkpoint_dir / "model_config.json"
    if not path.is_file():
        raise MissingInput(f"No model_config.json in {checkpoint_dir}: not a lit or training checkpoint")
    return Config(**json.loads(path.read_text()))


def load_model_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The model's full state dict (Lit-GPT names) from a lit checkpoint directory (``model.safetensors``)
    or a training checkpoint (sharded by torch.distributed.checkpoint, read in this one process)."""
    if (checkpoint_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(checkpoint_dir / "model.safetensors")
    if not (checkpoint_dir / ".metadata").is_file():
        raise MissingInput(f"{checkpoint_dir} holds neither model.safetensors nor a sharded training checkpoint")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(checkpoint_dir).read_metadata().state_dict_metadata
    model = {
        key.removeprefix("model."): torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for key, meta in metadata.items()
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": model}, checkpoint_id=checkpoint_dir, no_dist=True)
    return model


# What the weights compute besides their shapes: a run started from them with another value of one of
# these (a Llama 3.2 checkpoint without its rope scaling, untied) would train a different function.
FUNCTION_FIELDS = ("n_head", "n_query_groups", "rope_base", "rope_scaling", "tie_embeddings", "norm_eps", "bias")


def initial_weights(checkpoint_dir: Path, config: Config) -> dict[str, torch.Tensor]:
    """The weights that start a run (``--initial_checkpoint``), checked against the run's model: every tensor
    with its shape, and the checkpoint's own config (where it has one) agreeing on ``FUNCTION_FIELDS``.
    The context length may differ: continued pretraining often shortens or lengthens it."""
    if (checkpoint_dir / "model_config.json").is_file():
        theirs = read_model_config(checkpoint_dir)
        differ = [f"{name} {getattr(theirs, name)!r}, not {getattr(config, name)!r}" for name in FUNCTION_FIELDS
                  if getattr(theirs, name) != getattr(config, name)]  # fmt: skip
        if differ:
            raise InvalidInput(
                f"--initial_checkpoint {checkpoint_dir} was made with {'; '.join(differ)}: start from the "
                f"named config it came from (its model_config.json says {theirs.name or 'no name'}) or set "
                "those fields in --model_config"
            )
    weights = load_model_weights(checkpoint_dir)
    check_state_dict(weights, config, checkpoint_dir)
    return weights


def load_model(checkpoint_dir: Path, tokenizer_path: Path | None = None) -> tuple[Any, Tokenizer]:
    """A ``GPT`` in eval mode with the weights of a lit checkpoint, a training checkpoint (written by any
    number of ranks) or a Hugging Face Llama directory, and its tokenizer (``tokenizer_path``, else the
    checkpoint's copy)."""
    if not checkpoint_dir.is_dir():
        raise MissingInput(f"{checkpoint_dir} is not a directory")
    if (checkpoint_dir / "config.json").is_file() and not (checkpoint_dir / "model_config.json").is_file():
        config, weights = read_hf_model(checkpoint_dir)
    else:
        config = read_model_config(checkpoint_dir)
        weights = load_model_weights(checkpoint_dir)
        check_state_dict(weights, config, checkpoint_dir)
    tokenizer = find_tokenizer(checkpoint_dir, tokenizer_path)
    if tokenizer is None:
        raise MissingInput(f"No tokenizer found for {checkpoint_dir}: pass --tokenizer_path")
    model = GPT(config)
    model.load_state_dict(weights)
    return model.eval(), tokenizer


def find_tokenizer(checkpoint_dir: Path, tokenizer_path: Path | None) -> Tokenizer | None:
    """The tokenizer given, else the copy that a training or lit checkpoint carries, else none."""
    if tokenizer_path is not None:
        return Tokenizer(tokenizer_path)
    if any((checkpoint_dir / name).is_file() for name in (HF_FILE, SENTENCEPIECE_FILE)):
        return Tokenizer(checkpoint_dir)
    return None


def write_atomically(output_dir: Path, write: Any) -> None:
    """Call ``write(tmp_dir)`` and rename the result to ``output_dir``, which must not exist yet."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise OutputExists(f"{output_dir} exists and is not empty")
    tmp = output_dir.with_name(f".{output_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.iterdir():  # safetensors creates its files 0600: give them the usual mode
        path.chmod(0o666 & ~umask)
    if output_dir.exists():
        output_dir.rmdir()
    os.replace(tmp, output_dir)
