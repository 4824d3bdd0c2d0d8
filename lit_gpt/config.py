"""Model hyperparameters: one dataclass with Lit-GPT field names, and the named configs (TinyLlama's, and
the Llama 3 generation's shapes)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from lit_gpt.errors import InvalidInput

# Activation checkpointing, a setting of the run that reads without torch: none, every block, every other block.
Checkpointing = Literal["none", "full", "selective"]


@dataclass
class Config:
    """A decoder-only Llama model: RoPE, pre-norm RMSNorm, SwiGLU MLP, grouped-query attention.

    Field names follow Lit-GPT so that checkpoints and recipes written for it read unchanged.
    ``padded_vocab_size`` defaults to ``vocab_size`` rounded up to ``padding_multiple`` (a multiple of
    64 keeps the embedding and output matmuls on fast tensor-core shapes). The Llama 3 generation adds
    ``tie_embeddings`` (the output head is the embedding matrix: one weight, 0.26B parameters fewer at
    Llama 3.2 1B's shape) and ``rope_scaling``, Hugging Face's ``rope_scaling`` dict of the "llama3"
    kind (``factor``, ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``),
    computed as ``transformers`` does. Their defaults (untied, no scaling) keep every existing config,
    recipe and checkpoint meaning what it meant.
    """

    name: str = ""
    block_size: int = 2048
    vocab_size: int = 32000
    padding_multiple: int = 64
    padded_vocab_size: int | None = None
    n_layer: int = 22
    n_head: int = 32
    n_embd: int = 2048
    n_query_groups: int | None = None
    intermediate_size: int = 5632
    rope_base: float = 10000
    norm_eps: float = 1e-5
    bias: bool = False
    tie_embeddings: bool = False
    rope_scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)  # never the named configs' own dict
        if self.padded_vocab_size is None:
            padded = math.ceil(self.vocab_size / self.padding_multiple) * self.padding_multiple
            self.padded_vocab_size = padded
        self._validate()

    def _validate(self) -> None:
        positive = ("block_size", "vocab_size", "padding_multiple", "n_layer", "n_head", "n_embd")
        for field in (*positive, "n_query_groups", "intermediate_size", "rope_base"):
            if getattr(self, field) <= 0:
                raise InvalidInput(f"Config {self.name!r}: {field} must be positive, got {getattr(self, field)}")
        if self.n_embd % self.n_head:
            raise InvalidInput(
                f"Config {self.name!r}: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.n_head % self.n_query_groups:
            raise InvalidInput(
                f"Config {self.name!r}: n_head ({self.n_head}) must be divisible by "
                f"n_query_groups ({self.n_query_groups})"
            )
        if self.head_size % 2:
            raise InvalidInput(
                f"Config {self.name!r}: head_size = n_embd / n_head = {self.head_size} "
                "must be even for rotary embeddings"
            )
        if self.padded_vocab_size < self.vocab_size:
            raise InvalidInput(
                f"Config {self.name!r}: padded_vocab_size ({self.padded_vocab_size}) is smaller than "
                f"vocab_size ({self.vocab_size})"
            )
        if self.norm_eps <= 0:
            raise InvalidInput(f"Config {self.name!r}: norm_eps must be positive, got {self.norm_eps}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            missing = [key for key in LLAMA3_SCALING if key not in self.rope_scaling]
            if kind != "llama3" or missing:
                raise InvalidInput(
                    f"Config {self.name!r}: rope_scaling must be of rope_type llama3 with "
                    f"{', '.join(LLAMA3_SCALING)}; got {self.rope_scaling}"
                )

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, /, **overrides: Any) -> Config:
        """The named config, with any field replaced by ``overrides`` (a converted checkpoint's whole
        model_config.json, its ``name`` included, is accepted as overrides)."""
        if name not in NAMED_CONFIGS:
            raise InvalidInput(f"Unknown model name {name!r}; known names: {', '.join(sorted(NAMED_CONFIGS))}")
        unknown = sorted(set(overrides) - {field.name for field in fields(cls)})
        if unknown:
            raise InvalidInput(
                f"Unknown model config field(s) {', '.join(unknown)}; the fields are "
                f"{', '.join(field.name for field in fields(cls))}"
            )
        return cls(**{"name": name, **NAMED_CONFIGS[name], **overrides})

    def replace(self, **overrides: Any) -> Config:
        """A copy with some fields changed; a changed vocab size re-derives the padded size."""
        if "vocab_size" in overrides and "padded_vocab_size" not in overrides:
            overrides["padded_vocab_size"] = None
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LLAMA3_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
LLAMA_3_2_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    # TinyLlama paper, Table 1: 1,100,048,384 parameters.
    "tiny_LLaMA_1b": dict(
        block_size=2048,
        vocab_size=32000,
        n_layer=22,
        n_head=32,
        n_embd=2048,
        n_query_groups=4,
        intermediate_size=5632,
    ),
    # The small model of the original TinyLlama code base, for quick GPU experiments.
    "tiny_LLaMA_120M": dict(
        block_size=2048,
        vocab_size=32000,
        n_layer=12,
        n_head=12,
        n_embd=768,
        n_query_groups=1,
        intermediate_size=2048,
    ),
    # A CPU-sized model for the demo and the tests; its vocabulary matches assets/tokenizer.
    "tiny_LLaMA_5M": dict(
        block_size=256,
        vocab_size=4096,
        n_layer=4,
        n_head=8,
        n_embd=256,
        n_query_groups=2,
        intermediate_size=704,
    ),
}

# The Llama 3 generation, as released (config.json of each hub repository). Llama 3.2 ties the head and
# extends RoPE to 128k positions by the llama3 scaling; block_size is its original context of 8,192
# (the converted Hugging Face config keeps max_position_embeddings, 131,072). SmolLM2: Llama shapes with
# tied heads, a 49,152-entry vocabulary and 8,192 positions.
NAMED_CONFIGS |= {
    "Llama-3.2-1B": dict(
        block_size=8192,
        vocab_size=128256,
        n_layer=16,
        n_head=32,
        n_embd=2048,
        n_query_groups=8,
        intermediate_size=8192,
        rope_base=500000.0,
        tie_embeddings=True,
        rope_scaling=LLAMA_3_2_SCALING,
    ),
    "Llama-3.2-3B": dict(
        block_size=8192,
        vocab_size=128256,
        n_layer=28,
        n_head=24,
        n_embd=3072,
        n_query_groups=8,
        intermediate_size=8192,
        rope_base=500000.0,
        tie_embeddings=True,
        rope_scaling=LLAMA_3_2_SCALING,
    ),
    "SmolLM2-135M": dict(
        block_size=8192,
        vocab_size=49152,
        n_layer=30,
        n_head=9,
        n_embd=576,
        n_query_groups=3,
        intermediate_size=1536,
        rope_base=100000.0,
        tie_embeddings=True,
    ),
    "SmolLM2-360M": dict(
        block_size=8192,
        vocab_size=49152,
        n_layer=32,
        n_head=15,
        n_embd=960,
        n_query_groups=5,
        intermediate_size=2560,
        rope_base=100000.0,
        tie_embeddings=True,
    ),
    "SmolLM2-1.7B": dict(
        block_size=8192,
        vocab_size=49152,
        n_layer=24,
        n_head=32,
        n_embd=2048,
        n_query_groups=32,
        intermediate_size=8192,
        rope_base=130000.0,
        tie_embeddings=True,
    ),
}
# TinyLlama3, the plan of TinyLlama's README template (about 2B parameters, 4,096 context, Llama 3's
# tokenizer, tied embeddings): Llama 3.2 1B's block (n_embd 2048, 32 heads of 64, 8 query groups,
# SwiGLU 8192) at 28 layers instead of 16, no rope scaling at 4,096 positions -- 1,965,672,448 parameters,
# 14.6 GFLOPs per trained token.
# REFERENCE.md's TinyLlama3 section gives the reasons and scripts/plan_memory.py its memory per GPU.
NAMED_CONFIGS["tiny_LLaMA3_2b"] = NAMED_CONFIGS["Llama-3.2-1B"] | dict(block_size=4096, n_layer=28, rope_scaling=None)
