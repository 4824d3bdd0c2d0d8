"""The TinyLlama model in one file: a decoder-only Llama transformer (Llama 2 and 3 generations).

    tokens -> embedding -> n_layer x Block -> RMSNorm -> lm_head -> logits
    Block:  x + attention(RMSNorm(x))  then  x + SwiGLU-MLP(RMSNorm(x))

Attention is causal, grouped-query (n_query_groups key/value heads shared by n_head query heads) and
uses rotary position embeddings in the "rotate half" convention of Hugging Face Llama (with Llama 3's
frequency scaling where the config asks for it). With ``tie_embeddings`` the lm_head's weight is the
embedding's: one Parameter, which the state dict holds once, as ``transformer.wte.weight`` (so every
checkpoint and conversion stores it once, and loading gives the head its weight back). The heavy
operations go through ``lit_gpt.kernels``, which picks fused GPU kernels or exact PyTorch code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from lit_gpt import kernels
from lit_gpt.config import Checkpointing, Config
from lit_gpt.errors import InvalidInput, TensorMismatch

if TYPE_CHECKING:
    from lit_gpt.tokenizer import Boundary


class GPT(nn.Module):
    def __init__(self, config: Config, activation_checkpointing: Checkpointing = "none") -> None:
        """``activation_checkpointing``: in training, recompute the activations of every block ("full") or
        of every other block ("selective": half the memory saving for half the recomputation) in the
        backward pass instead of keeping them."""
        super().__init__()
        if activation_checkpointing not in ("none", "full", "selective"):
            raise ValueError(
                f"activation_checkpointing must be none, full or selective, not {activation_checkpointing!r}"
            )
        self.config = config
        self.activation_checkpointing = activation_checkpointing
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=RMSNorm(config.n_embd, eps=config.norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
            self.register_state_dict_post_hook(_drop_tied_head)
            self.register_load_state_dict_pre_hook(_restore_tied_head)
        self.head_loss = kernels.linear_cross_entropy  # training compiles it with the blocks (--compile)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """TinyLlama's initialisation (also used after materialising a model built on the meta device).

        Every matrix is N(0, sqrt(2 / (5 n_embd))), the small-init of Nguyen & Salazar; the projections
        that write into the residual stream get 1 / (sqrt(n_embd) n_layer) so that depth does not
        inflate the residual.
        """
        std = math.sqrt(2.0 / 5.0 / self.config.n_embd)
        residual_std = 1.0 / math.sqrt(self.config.n_embd) / self.config.n_layer
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.transformer.h:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        z_loss: float = 0.0,
        boundary: Boundary | None = None,
        logits_at: torch.Tensor | None = None,
        filled: torch.Tensor | None = None,
    ) -> torch.Tensor | kernels.LossTerms:
        """Logits (B, T, padded_vocab_size) for token ids ``idx`` (B, T), or with ``targets`` the loss.

        ``input_pos`` (T,) gives the absolute positions of ``idx`` when decoding with a KV cache
        (see :meth:`set_kv_cache`); without it the tokens are positions 0..T-1. With ``targets`` (B, T)
        the mean cross-entropy (plus ``z_loss`` x the mean squared logsumexp of the logits) is computed
        chunk by chunk without materialising the logits; ``LossTerms`` holds it and the z term.

        With ``boundary`` (training with ``--document_mask``) each token attends only to the earlier tokens
        of its own document, documents cut at the tokenizer's boundary token (``kernels.document_ids``). The
        rotary positions need not restart at each document: RoPE's scores depend on the distance between
        two positions only, so a document scores alike wherever it sits in the block.

        ``logits_at``, a boolean (B, T) mask, returns the logits of those positions only, as (N, V) rows in
        row-major order: scoring a continuation needs its own positions, and the output layer (the
        largest matmul of a small model) then runs on those alone.

        ``filled``, a boolean (B, cache length) mask, decodes a batch of prompts of different lengths with
        the KV cache: each prompt is left-padded to the longest, and a position is attended to only where
        its row holds a token (the padding attends to itself alone, which keeps it finite and unread).
        """
        T = idx.shape[1]
        if input_pos is None:
            if T > self.config.block_size:
                raise ValueError(f"Sequence length {T} exceeds the model's block_size {self.config.block_size}")
            input_pos = torch.arange(T, device=idx.device)
        mask = filled
        if filled is not None and self.transformer.h[0].attn.kv_cache is None:
            raise ValueError("filled (a padded batch) is for decoding with a KV cache")
        if boundary is not None:
            if self.transformer.h[0].attn.kv_cache is not None:
                raise ValueError("Document masks are for training; decoding with a KV cache scores one text")
            mask = kernels.document_mask(kernels.document_ids(idx, boundary))  # once, for every layer
        config = self.config
        cos, sin = kernels.rope_cache(input_pos, config.head_size, config.rope_base, config.rope_scaling)
        x = self.transformer.wte(idx)
        every = {"none": 0, "full": 1, "selective": 2}[self.activation_checkpointing]
        for i, block in enumerate(self.transformer.h):
            if self.training and every and i % every == 0:
                x = checkpoint(block, x, cos, sin, None, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, input_pos, mask)
        x = self.transformer.ln_f(x)
        if targets is not None:
            return self.head_loss(x, self.lm_head.weight, targets, z_loss=z_loss)
        return self.lm_head(x if logits_at is None else x[logits_at])

    def set_kv_cache(self, batch_size: int, max_seq_length: int | None = None) -> None:
        """Allocate a key/value cache in every block, on the model's device and dtype, for decoding."""
        max_seq_length = max_seq_length or self.config.block_size
        weight = self.lm_head.weight
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(
                batch_size,
                max_seq_length,
                self.config.n_query_groups,
                self.config.head_size,
                weight.device,
                weight.dtype,
            )

    def clear_kv_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None


class Block(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = LLaMAMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: kernels.AttentionMask | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), cos, sin, input_pos, mask)
        return x + self.mlp(self.norm_2(x))


class CausalSelfAttention(nn.Module):
    """Grouped-query attention with one fused q/k/v projection.

    The fused weight is laid out group by group: for each of the n_query_groups groups, its
    n_head / n_query_groups query heads, then its key head, then its value head (Lit-GPT's layout).
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        qkv_size = (config.n_head + 2 * config.n_query_groups) * config.head_size
        self.attn = nn.Linear(config.n_embd, qkv_size, bias=config.bias)
        self.proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias)
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: kernels.AttentionMask | None = None,
    ) -> torch.Tensor:
        """``mask``: where each query may attend (a document mask), or with the KV cache which positions
        of each row hold a token (``GPT.forward``'s ``filled``); None is causal."""
        B, T, _ = x.shape
        groups, head_size = self.config.n_query_groups, self.config.head_size
        q_per_kv = self.config.n_head // groups
        qkv = self.attn(x).view(B, T, groups, q_per_kv + 2, head_size)
        q = qkv[:, :, :, :q_per_kv].reshape(B, T, self.config.n_head, head_size)
        k = qkv[:, :, :, q_per_kv]
        v = qkv[:, :, :, q_per_kv + 1]
        q = kernels.apply_rotary(q, cos, sin)
        k = kernels.apply_rotary(k, cos, sin)
        if self.kv_cache is not None:
            if input_pos is None:
                raise ValueError("A model with a KV cache needs input_pos")
            k, v = self.kv_cache.update(input_pos, k, v)
            keys = torch.arange(k.shape[1], device=x.device)[None, :]
            causal = keys <= input_pos[:, None]
            if mask is not None:  # a left-padded batch: the filled keys of each row, and each query itself
                causal = (causal & mask[:, None, None, : k.shape[1]]) | (keys == input_pos[:, None])
            mask = causal
        y = kernels.attention(q, k, v, mask)
        return self.proj(y.reshape(B, T, self.config.n_head * head_size))


class KVCache(nn.Module):
    """Keys and values of the positions decoded so far, for incremental generation."""

    def __init__(
        self,
        batch_size: int,
        max_seq_length: int,
        n_query_groups: int,
        head_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        shape = (batch_size, max_seq_length, n_query_groups, head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, T, G, D) at ``input_pos`` and return the cache up to the last of them."""
        if int(input_pos[-1]) >= self.k.shape[1]:
            raise ValueError(f"Position {int(input_pos[-1])} is past the KV cache length {self.k.shape[1]}")
        self.k[:, input_pos] = k.to(self.k.dtype)
        self.v[:, input_pos] = v.to(self.v.dtype)
        end = int(input_pos[-1]) + 1
        return self.k[:, :end], self.v[:, :end]


class LLaMAMLP(nn.Module):
    """SwiGLU feed-forward: fc_1 is the gate, fc_2 the up projection, proj the down projection."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.fc_2 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.swiglu(x, self.fc_1, self.fc_2, self.proj)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


def _drop_tied_head(module: GPT, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    state_dict.pop(f"{prefix}lm_head.weight", None)


def _restore_tied_head(module: GPT, state_dict: dict, prefix: str, *args: object) -> None:
    embedding = state_dict.get(f"{prefix}transformer.wte.weight")
    if embedding is not None:
        state_dict.setdefault(f"{prefix}lm_head.weight", embedding)


def check_state_dict(state_dict: dict[str, torch.Tensor], config: Config, source: Path) -> None:
    """Every tensor the model needs is there, with its shape, and nothing else."""
    with torch.device("meta"):
        expected = {name: tensor.shape for name, tensor in GPT(config).state_dict().items()}
    for name, shape in expected.items():
        if name not in state_dict:
            raise TensorMismatch(f"{source}: missing tensor {name!r}")
        if state_dict[name].shape != shape:
            raise InvalidInput(
                f"{source}: tensor {name!r} has shape {tuple(state_dict[name].shape)}, expected {tuple(shape)}"
            )
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise TensorMismatch(f"{source}: unexpected tensor {unexpected[0]!r}")
