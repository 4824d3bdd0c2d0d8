"""Checkpoints: atomic training-state directories, and the one Lit-GPT <-> Hugging Face name map.

A training checkpoint is ``out_dir/step-{step:08d}/``: the sharded model and optimizer state written by
Fabric (torch.distributed.checkpoint, one file per rank), its ``meta.pt`` with counters, loader
positions and RNG state, and ``model_config.json`` and ``hyperparameters.json`` so that the directory
describes itself. It is written as ``out_dir/.tmp-step-{step:08d}`` and renamed when every rank has
finished, so a crash never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from lit_gpt.config import Config

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """The finished checkpoints in ``out_dir``, oldest first (temporary directories are ignored)."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def save_training_state(
    fabric: Any, out_dir: Path, step: int, state: dict[str, Any], files: dict[str, dict], keep: int
) -> Path:
    """Write ``state`` with ``fabric.save`` plus JSON ``files``, atomically; keep the newest ``keep``."""
    final = out_dir / checkpoint_name(step)
    tmp = out_dir / f".tmp-{checkpoint_name(step)}"
    if fabric.global_rank == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a crash during an earlier save
    fabric.barrier()
    fabric.save(tmp, state)
    if fabric.global_rank == 0:
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2, default=str))
    fabric.barrier()
    if fabric.global_rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    fabric.barrier()
    return final


# Lit-GPT module -> Hugging Face Llama module; "{i}" is the layer index. Each entry covers the
# module's ".weight" and, where the config has biases, its ".bias".
LIT_TO_HF_MODULES: dict[str, str] = {
    "transformer.wte": "model.embed_tokens",
    "transformer.h.{i}.norm_1": "model.layers.{i}.input_layernorm",
    "transformer.h.{i}.attn.proj": "model.layers.{i}.self_attn.o_proj",
    "transformer.h.{i}.norm_2": "model.layers.{i}.post_attention_layernorm",
    "transformer.h.{i}.mlp.fc_1": "model.layers.{i}.mlp.gate_proj",
    "transformer.h.{i}.mlp.fc_2": "model.layers.{i}.mlp.up_proj",
    "transformer.h.{i}.mlp.proj": "model.layers.{i}.mlp.down_proj",
    "transformer.ln_f": "model.norm",
    "lm_head": "lm_head",
}
# The fused query/key/value projection, which Hugging Face keeps as three.
LIT_QKV = "transformer.h.{i}.attn.attn"
HF_QKV = ("model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj", "model.layers.{i}.self_attn.v_proj")

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _template(name: str) -> tuple[str, str | None]:
    """'transformer.h.3.mlp.fc_1.weight' -> ('transformer.h.{i}.mlp.fc_1.weight', '3')."""
    match = _LAYER_INDEX.search(name)
    if match is None:
        return name, None
    return name[: match.start()] + ".{i}." + name[match.end() :], match.group(1)


def split_qkv(fused: torch.Tensor, config: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused q/k/v weight (or bias), laid out group by group, into Hugging Face's q, k and v."""
    q_per_kv = config.n_head // config.n_query_groups
    grouped = fused.reshape(config.n_query_groups, q_per_kv + 2, config.head_size, *fused.shape[1:])
    q = grouped[:, :q_per_kv].reshape(config.n_head * config.head_size, *fused.shape[1:])
    k = grouped[:, q_per_kv].reshape(config.n_query_groups * config.head_size, *fused.shape[1:])
    v = grouped[:, q_per_kv + 1].reshape(config.n_query_groups * config.head_size, *fused.shape[1:])
    return q, k, v


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Config) -> torch.Tensor:
    """The inverse of :func:`split_qkv`."""
    q_per_kv = config.n_head // config.n_query_groups
    rest = q.shape[1:]
    q = q.reshape(config.n_query_groups, q_per_kv, config.head_size, *rest)
    k = k.reshape(config.n_query_groups, 1, config.head_size, *rest)
    v = v.reshape(config.n_query_groups, 1, config.head_size, *rest)
    return torch.cat((q, k, v), dim=1).reshape(-1, *rest)


def lit_to_hf(state_dict: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """Rename a Lit-GPT state dict to Hugging Face Llama names, splitting the fused q/k/v."""
    converted = {}
    for name, tensor in state_dict.items():
        template, layer = _template(name)
        module, _, kind = template.rpartition(".")
        if module == LIT_QKV:
            for hf_module, part in zip(HF_QKV, split_qkv(tensor, config), strict=True):
                converted[f"{hf_module.format(i=layer)}.{kind}"] = part
        elif module in LIT_TO_HF_MODULES:
            converted[f"{LIT_TO_HF_MODULES[module].format(i=layer)}.{kind}"] = tensor
        else:
            raise KeyError(f"No Hugging Face name for Lit-GPT tensor {name!r}")
    return converted


def hf_to_lit(state_dict: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face Llama state dict to Lit-GPT names, fusing q/k/v."""
    hf_to_lit_modules = {hf: lit for lit, hf in LIT_TO_HF_MODULES.items()}
    converted = {}
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state_dict.items():
        template, layer = _template(name)
        module, _, kind = template.rpartition(".")
        if module in HF_QKV:
            qkv_parts.setdefault((layer, kind), {})[module] = tensor
        elif module in hf_to_lit_modules:
            converted[f"{hf_to_lit_modules[module].format(i=layer)}.{kind}"] = tensor
        else:
            raise KeyError(f"No Lit-GPT name for Hugging Face tensor {name!r}")
    for (layer, kind), parts in qkv_parts.items():
        missing = [f"{m.format(i=layer)}.{kind}" for m in HF_QKV if m not in parts]
        if missing:
            raise KeyError(f"Missing Hugging Face tensor {missing[0]!r}")
        fused = merge_qkv(*(parts[m] for m in HF_QKV), config)
        converted[f"{LIT_QKV.format(i=layer)}.{kind}"] = fused
    return converted
