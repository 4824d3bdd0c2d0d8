"""Everything Hugging Face: the one Lit-GPT <-> Llama name map, config translation, weights and tokenizer.

``write_hf_model`` makes a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load
as it is; ``read_hf_model`` reads one back as our Config and state dict. The scripts
``convert_lit_checkpoint.py`` and ``convert_hf_checkpoint.py`` are thin CLIs over these two.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from lit_gpt.config import LLAMA3_SCALING, Config
from lit_gpt.errors import InvalidInput, MissingInput, TensorMismatch
from lit_gpt.model import check_state_dict
from lit_gpt.tokenizer import Tokenizer

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
    """Rename a Lit-GPT state dict to Hugging Face Llama names, splitting the fused q/k/v (a tied model's
    has no head: ``tie_word_embeddings`` makes Hugging Face use the embedding)."""
    converted = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        template, layer = _template(name)
        module, _, kind = template.rpartition(".")
        if module == LIT_QKV:
            for hf_module, part in zip(HF_QKV, split_qkv(tensor, config), strict=True):
                converted[f"{hf_module.format(i=layer)}.{kind}"] = part
        elif module in LIT_TO_HF_MODULES:
            converted[f"{LIT_TO_HF_MODULES[module].format(i=layer)}.{kind}"] = tensor
        else:
            raise TensorMismatch(f"No Hugging Face name for Lit-GPT tensor {name!r}")
    return converted


def hf_to_lit(state_dict: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face Llama state dict to Lit-GPT names, fusing q/k/v. A tied model's state dict
    has no ``lm_head.weight`` (the head is the embedding): a stored one is ignored, as Hugging Face does."""
    hf_to_lit_modules = {hf: lit for lit, hf in LIT_TO_HF_MODULES.items()}
    converted = {}
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        template, layer = _template(name)
        module, _, kind = template.rpartition(".")
        if module in HF_QKV:
            qkv_parts.setdefault((layer, kind), {})[module] = tensor
        elif module in hf_to_lit_modules:
            converted[f"{hf_to_lit_modules[module].format(i=layer)}.{kind}"] = tensor
        else:
            raise TensorMismatch(f"No Lit-GPT name for Hugging Face tensor {name!r}")
    for (layer, kind), parts in qkv_parts.items():
        missing = [f"{m.format(i=layer)}.{kind}" for m in HF_QKV if m not in parts]
        if missing:
            raise TensorMismatch(f"Missing Hugging Face tensor {missing[0]!r}")
        fused = merge_qkv(*(parts[m] for m in HF_QKV), config)
        converted[f"{LIT_QKV.format(i=layer)}.{kind}"] = fused
    return converted


def hf_llama_config(config: Config, dtype: torch.dtype, bos_id: int | None = 1, eos_id: int = 2) -> dict[str, Any]:
    """config.json of a Hugging Face ``LlamaForCausalLM`` with the shape of ``config`` (Llama 2's special
    token ids unless a tokenizer says otherwise)."""
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
        "rope_scaling": config.rope_scaling,
        "hidden_act": "silu",
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def config_from_hf(hf: dict[str, Any], source: Path) -> Config:
    """Our Config for a Hugging Face Llama config.json; other architectures are refused."""
    if hf.get("model_type") != "llama":
        raise InvalidInput(f"{source}: model_type {hf.get('model_type')!r} is not a Llama model; only Llama converts")
    rope = hf.get("rope_parameters") or {}  # transformers 5 keeps rope_theta and the scaling together here
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if scaling is not None and kind != "llama3":
        raise InvalidInput(f"{source}: RoPE scaling of type {kind!r} is not supported (llama3 is)")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias", False) != hf.get("attention_bias", False):
        raise InvalidInput(f"{source}: only SiLU MLPs with biases matching the attention's are supported")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    if head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
        raise InvalidInput(f"{source}: head_dim {head_dim} x {hf['num_attention_heads']} heads != hidden_size")
    rope_theta = hf.get("rope_theta") or rope.get("rope_theta", 10000.0)
    if scaling is not None:
        scaling = {"rope_type": "llama3"} | {key: scaling[key] for key in LLAMA3_SCALING}
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
        rope_base=rope_theta,
        norm_eps=hf["rms_norm_eps"],
        bias=hf.get("attention_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_scaling=scaling,
    )


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
    raise MissingInput(f"No model.safetensors or pytorch_model.bin (or their index) in {checkpoint_dir}")


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


def sentencepiece_config(tokenizer: Tokenizer, model_max_length: int) -> dict:
    """tokenizer_config.json for Llama's SentencePiece tokenizer, BOS added as in training."""
    processor = tokenizer.processor
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": processor.id_to_piece(tokenizer.bos_id),
        "eos_token": processor.id_to_piece(tokenizer.eos_id),
        "unk_token": processor.id_to_piece(processor.unk_id()),
        "pad_token": None,
        "add_bos_token": tokenizer.boundary.position == "before",
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


def write_hf_tokenizer(directory: Path, tokenizer: Tokenizer, model_max_length: int) -> None:
    """The tokenizer files that ``AutoTokenizer.from_pretrained(directory)`` loads as they are and that
    encode as training did: BOS before each text where documents start with one, nothing added otherwise."""
    if tokenizer.backend == "sentencepiece":
        shutil.copy(tokenizer.path, directory / "tokenizer.model")
        config = sentencepiece_config(tokenizer, model_max_length)
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        write_fast_tokenizer(directory)
        return
    from tokenizers import processors

    hf = tokenizer.hf
    if tokenizer.boundary.position == "before" and hf.encode("a").ids[:1] != [tokenizer.bos_id]:
        hf = type(hf).from_str(hf.to_str())  # a copy, with the post-processor that Llama 3's has
        bos = tokenizer.boundary.token
        hf.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)]
        )
    hf.save(str(directory / "tokenizer.json"))
    companion = tokenizer.path.with_name("tokenizer_config.json")
    config = json.loads(companion.read_text()) if companion.is_file() else {}
    special = {
        "bos_token": tokenizer.id_to_token(tokenizer.bos_id) if tokenizer.bos_id is not None else None,
        "eos_token": tokenizer.id_to_token(tokenizer.eos_id),
    }
    config |= special | {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length}
    config.setdefault("clean_up_tokenization_spaces", False)
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special_map = {key: value for key, value in special.items() if value is not None}
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))


def write_hf_model(
    directory: Path,
    weights: dict[str, torch.Tensor],
    config: Config,
    dtype: torch.dtype | None,
    tokenizer: Tokenizer | None,
    max_shard_bytes: int,
) -> None:
    """A complete Hugging Face Llama directory for our ``weights`` (Lit-GPT names): config,
    generation config, safetensors weights and, when known, the tokenizer with its special ids."""
    hf_weights = lit_to_hf(weights, config)
    save_hf_weights(hf_weights, directory, dtype, max_shard_bytes)
    special = {"bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id} if tokenizer else {}
    stored = next(iter(weights.values())).dtype
    hf_config = hf_llama_config(config, dtype or stored, **special)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    generation = {"bos_token_id": hf_config["bos_token_id"], "eos_token_id": hf_config["eos_token_id"]}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer is not None:
        write_hf_tokenizer(directory, tokenizer, config.block_size)


def read_hf_model(checkpoint_dir: Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """Our Config and state dict (Lit-GPT names, checked) for a Hugging Face Llama directory."""
    config_path = checkpoint_dir / "config.json"
    if not config_path.is_file():
        raise MissingInput(f"No config.json in {checkpoint_dir}")
    hf_config = json.loads(config_path.read_text())
    config = config_from_hf(hf_config, config_path)
    weights = {k: v for k, v in read_hf_weights(checkpoint_dir).items() if not k.endswith("rotary_emb.inv_freq")}
    state_dict = hf_to_lit(weights, config)
    check_state_dict(state_dict, config, checkpoint_dir)
    return config, state_dict
