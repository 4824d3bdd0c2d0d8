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
import warnings
from pathlib import Path
from typing import Any

import torch

from lit_gpt.config import Config
from lit_gpt.tokenizer import Tokenizer

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")
DATA_FINGERPRINT = "data_fingerprint.json"  # the training shards' names and sizes, per source
RUN_FILES = ("metrics.csv", "tensorboard", "wandb")  # what a run writes into out_dir besides checkpoints


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """The finished checkpoints in ``out_dir``, oldest first (temporary directories are ignored)."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def remove_run(out_dir: Path) -> list[str]:
    """Delete a run's checkpoints (complete or not) and logs from ``out_dir``; returns what was removed."""
    removed = []
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if not (CHECKPOINT_PATTERN.match(path.name.removeprefix(".tmp-")) or path.name in RUN_FILES):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def resume_checkpoint(resume: bool | str | Path, out_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` asks for: "auto" the newest in ``out_dir`` if any, true the newest
    (which must exist), false none, or a given checkpoint directory."""
    if resume is False:
        return None
    if resume is True or resume == "auto":
        found = complete_checkpoints(out_dir)
        if not found and resume is True:
            raise FileNotFoundError(f"--resume true but no checkpoint in {out_dir}")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "meta.pt").is_file():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no meta.pt)")
    return path


def save_training_state(
    fabric: Any,
    out_dir: Path,
    step: int,
    state: dict[str, Any],
    files: dict[str, dict],
    keep: int,
    copies: dict[str, Path] | None = None,
) -> Path:
    """Write ``state`` with ``fabric.save``, JSON ``files`` and ``copies`` of files (such as the tokenizer),
    atomically; keep the newest ``keep`` checkpoints."""
    final = out_dir / checkpoint_name(step)
    tmp = out_dir / f".tmp-{checkpoint_name(step)}"
    if fabric.global_rank == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a crash during an earlier save
    fabric.barrier()
    fabric.save(tmp, state)
    if fabric.global_rank == 0:
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2, default=str))
        for name, source in (copies or {}).items():
            shutil.copy(source, tmp / name)
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


# ------------------------------------------------------------------------ Hugging Face Llama configs


def hf_llama_config(config: Config, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of a Hugging Face ``LlamaForCausalLM`` with the shape of ``config``."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.padded_vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_query_groups,
        "head_dim": config.head_size,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": float(config.rope_base),
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def config_from_hf(hf: dict[str, Any], source: Path) -> Config:
    """Our Config for a Hugging Face Llama config.json; other architectures are refused."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not a Llama model; only Llama converts")
    if hf.get("rope_scaling") or (hf.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        raise ValueError(f"{source}: RoPE scaling is not supported")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias", False) != hf.get("attention_bias", False):
        raise ValueError(f"{source}: only SiLU MLPs with biases matching the attention's are supported")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    if head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
        raise ValueError(f"{source}: head_dim {head_dim} x {hf['num_attention_heads']} heads != hidden_size")
    rope_theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return Config(
        name=hf.get("_name_or_path", ""),
        block_size=hf["max_position_embeddings"],
        vocab_size=hf["vocab_size"],
        padded_vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_embd=hf["hidden_size"],
        n_query_groups=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        rope_base=int(rope_theta),
        norm_eps=hf["rms_norm_eps"],
        bias=hf.get("attention_bias", False),
    )


# ---------------------------------------------------------------------------- reading model weights


def read_model_config(checkpoint_dir: Path) -> Config:
    path = checkpoint_dir / "model_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"No model_config.json in {checkpoint_dir}: not a lit or training checkpoint")
    return Config(**json.loads(path.read_text()))


def load_model_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The model's full state dict (Lit-GPT names) from a lit checkpoint directory (``model.safetensors``)
    or a training checkpoint (sharded by torch.distributed.checkpoint, read in this one process)."""
    if (checkpoint_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(checkpoint_dir / "model.safetensors")
    if not (checkpoint_dir / ".metadata").is_file():
        raise FileNotFoundError(f"{checkpoint_dir} holds neither model.safetensors nor a sharded training checkpoint")
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


def find_tokenizer(checkpoint_dir: Path, tokenizer_path: Path | None) -> Tokenizer | None:
    """The tokenizer given, the one a lit checkpoint holds, or the one its training run recorded."""
    if tokenizer_path is not None:
        return Tokenizer(tokenizer_path)
    if (checkpoint_dir / "tokenizer.model").is_file():
        return Tokenizer(checkpoint_dir / "tokenizer.model")
    hyperparameters = checkpoint_dir / "hyperparameters.json"
    recorded = json.loads(hyperparameters.read_text()).get("tokenizer_path") if hyperparameters.is_file() else None
    if recorded and recorded != "None" and Path(recorded).exists():
        return Tokenizer(recorded)
    return None


def check_state_dict(state_dict: dict[str, torch.Tensor], config: Config, source: Path) -> None:
    """Every tensor the model needs is there, with its shape, and nothing else."""
    from lit_gpt.model import GPT

    with torch.device("meta"):
        expected = {name: tensor.shape for name, tensor in GPT(config).state_dict().items()}
    for name, shape in expected.items():
        if name not in state_dict:
            raise KeyError(f"{source}: missing tensor {name!r}")
        if state_dict[name].shape != shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(state_dict[name].shape)}, expected {tuple(shape)}"
            )
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise KeyError(f"{source}: unexpected tensor {unexpected[0]!r}")


# ----------------------------------------------------------------------------- Hugging Face weights


def read_hf_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face model's tensors: safetensors (sharded or not), or ``pytorch_model*.bin`` loaded with
    ``weights_only=True`` so that no pickled code ever runs."""
    from safetensors.torch import load_file

    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = checkpoint_dir / index_name
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
        if not files and (checkpoint_dir / single_name).is_file():
            files = [single_name]
        if files:
            weights: dict[str, torch.Tensor] = {}
            for name in files:
                path = checkpoint_dir / name
                if name.endswith(".safetensors"):
                    weights.update(load_file(path))
                else:
                    weights.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
            return weights
    raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin (or their index) in {checkpoint_dir}")


def save_hf_weights(
    weights: dict[str, torch.Tensor], output_dir: Path, dtype: torch.dtype | None, max_shard_bytes: int
) -> None:
    """model.safetensors, or model-0000i-of-0000n.safetensors plus an index above ``max_shard_bytes``.

    Tensors are cast one shard at a time, so at most one shard exists twice in memory.
    """
    from safetensors.torch import save_file

    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in weights.items():
        nbytes = tensor.numel() * (dtype or tensor.dtype).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    total = 0
    for file_name, shard in zip(names, shards, strict=True):
        tensors = {name: weights[name].to(dtype or weights[name].dtype).contiguous() for name in shard}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, output_dir / file_name, metadata={"format": "pt"})
    if len(shards) > 1:
        weight_map = {name: file_name for file_name, shard in zip(names, shards, strict=True) for name in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (output_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_atomically(output_dir: Path, write: Any) -> None:
    """Call ``write(tmp_dir)`` and rename the result to ``output_dir``, which must not exist yet."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty")
    tmp = output_dir.with_name(f".{output_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if output_dir.exists():
        output_dir.rmdir()
    os.replace(tmp, output_dir)
