"""Device memory of a training run, before it runs: what each GPU holds at the peak of a step.

A config's shape alone decides the answer, so it can be worked out on a laptop for an A100-80G:

- **states**: each device's share of the fp32 weights, gradients and AdamW's two moments (FSDP2 shards
  them over ``shard_size`` devices: every device, or one node's with hybrid sharding);
- **gathered**: the unsharded weights FSDP2 all-gathers in the compute dtype -- the root's (embedding,
  and the head when untied) for the whole step, and two blocks (the one computing and the one prefetched),
  with their unsharded gradients and the fp32 copies reduce-scattered;
- **activations**: what autograd saves for the backward pass. Measured, not modelled: one block runs
  forward on the CPU, in the compute dtype, with PyTorch's own kernels (the exact references of
  ``lit_gpt.kernels``; scaled_dot_product_attention's flash path saves what FlashAttention saves on a GPU),
  and every tensor it saves is counted once. A block's saving is linear in its tokens, so a few hundred
  tokens give bytes per token. Checkpointed blocks keep their input only, plus one block's activations
  while it is recomputed. Fused GPU kernels and torch.compile save less: on a GPU this is an upper bound;
- **loss**: the chunked output layer (``kernels.linear_cross_entropy``) keeps the fp32 gradient of the
  head's weight and the gradient of its input from forward to backward; measured on the meta device at
  full size (it allocates nothing);
- **transient**: the larger of the loss's chunk buffers (forward) and, when the top block is
  checkpointed, its recomputed activations (backward; the other recomputations reuse what the blocks
  above them freed).

The sum leaves out the CUDA context, NCCL's buffers and the caching allocator's fragmentation: keep
several GiB free (:data:`RESERVE`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from lit_gpt import kernels
from lit_gpt.config import Checkpointing, Config
from lit_gpt.model import GPT, Block

RESERVE = 6 * 2**30  # CUDA context (~0.5 GiB), NCCL buffers and allocator fragmentation on an 80 GB card
STATE_BYTES = {"bf16-mixed": 4 + 4 + 8, "bf16-true": 2 + 2 + 4, "32-true": 4 + 4 + 8}  # weight, grad, AdamW
COMPUTE_DTYPE = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "32-true": torch.float32}
MEASURED_TOKENS = 256


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one device holds at the peak of a training step, by what holds them."""

    states: int
    gathered: int
    activations: int
    loss: int
    transient: int

    @property
    def total(self) -> int:
        return self.states + self.gathered + self.activations + self.loss + self.transient

    def lines(self, capacity_gib: float | None = None) -> list[str]:
        """A table of the parts in GiB; with a card's capacity, whether the step fits it with RESERVE free
        ("fits"), with less ("tight in": fused kernels may still make it fit) or not at all."""
        parts = [(name, getattr(self, name)) for name in ("states", "gathered", "activations", "loss", "transient")]
        rows = [f"  {name:12s} {size / 2**30:7.2f} GiB" for name, size in parts]
        rows.append(f"  {'total':12s} {self.total / 2**30:7.2f} GiB")
        if capacity_gib is not None:
            free = capacity_gib * 2**30 - self.total
            verdict = "fits" if free >= RESERVE else "tight in" if free >= 0 else "does NOT fit"
            rows.append(
                f"  {verdict} {capacity_gib:g} GiB: {free / 2**30:.1f} GiB left "
                f"(want {RESERVE / 2**30:.0f} GiB for CUDA, NCCL and fragmentation)"
            )
        return rows


def saved_bytes(forward: Callable[[], object], parameters: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves while ``forward`` runs, each storage once, the parameters'
    own storages left out (FSDP2 counts them in ``gathered``)."""
    own = {p.untyped_storage()._cdata for p in parameters}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in own:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(saved.values())


def block_bytes_per_token(config: Config, dtype: torch.dtype, tokens: int = MEASURED_TOKENS) -> float:
    """What one block saves for backward per token, measured on the CPU in ``dtype``."""
    torch.manual_seed(0)
    block = Block(config).to(dtype)
    x = torch.randn(1, tokens, config.n_embd, dtype=dtype, requires_grad=True)
    cos, sin = kernels.rope_cache(torch.arange(tokens), config.head_size, config.rope_base, config.rope_scaling)
    size = saved_bytes(lambda: block(x, cos.to(dtype), sin.to(dtype)), block.parameters())
    return size / tokens


def loss_bytes(config: Config, rows: int, dtype: torch.dtype) -> tuple[int, int]:
    """What the final norm and the chunked loss keep from forward to backward, and one chunk's buffers."""
    with torch.device("meta"):
        norm_weight = torch.ones(config.n_embd, dtype=dtype, requires_grad=True)
        weight = torch.empty(config.padded_vocab_size, config.n_embd, dtype=dtype, requires_grad=True)
        x = torch.empty(rows, config.n_embd, dtype=dtype, requires_grad=True)
        targets = torch.zeros(rows, dtype=torch.long)

        def forward() -> object:
            hidden = kernels.rms_norm_reference(x, norm_weight, config.norm_eps)
            return kernels.linear_cross_entropy(hidden, weight, targets)

        kept = saved_bytes(forward, [weight, norm_weight])
    chunk = min(rows, kernels.default_chunk_rows(config.padded_vocab_size, rows)) * config.padded_vocab_size
    return kept, chunk * 4 * (1 if dtype == torch.float32 else 3)  # as kernels.default_chunk_rows says


def parameter_counts(config: Config) -> tuple[int, int]:
    """(parameters of the whole model, counted once when tied; parameters of one block)."""
    with torch.device("meta"):
        model = GPT(config)
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    return sum(p.numel() for p in model.parameters()), block


def plan_memory(
    config: Config,
    micro_batch_size: int,
    precision: str = "bf16-mixed",
    activation_checkpointing: Checkpointing = "none",
    shard_size: int = 1,
    seq_len: int | None = None,
) -> MemoryPlan:
    """The peak bytes on one device of a training step at ``micro_batch_size`` x ``seq_len`` (default: the
    config's block_size) tokens, parameters sharded over ``shard_size`` devices."""
    dtype = COMPUTE_DTYPE[precision]
    tokens = micro_batch_size * (seq_len or config.block_size)
    total, block = parameter_counts(config)
    root = total - config.n_layer * block
    states = total * STATE_BYTES[precision] // shard_size
    # unsharded compute-dtype weights and gradients, and the fp32 copy of the gradients reduce-scattered
    gathered = (root + 2 * block) * (2 * dtype.itemsize + 4) if shard_size > 1 else 0
    per_token = block_bytes_per_token(config, dtype)
    every = {"none": 0, "full": 1, "selective": 2}[activation_checkpointing]
    recomputed = range(0, config.n_layer, every) if every else range(0)
    kept = config.n_layer - len(recomputed)
    activations = tokens * (kept * per_token + len(recomputed) * config.n_embd * dtype.itemsize)
    loss, buffers = loss_bytes(config, tokens, dtype)
    top_recomputed = tokens * per_token if config.n_layer - 1 in recomputed else 0
    return MemoryPlan(states, gathered, int(activations), loss, int(max(buffers, top_recomputed)))
