"""The model's hot operations, each with an exact PyTorch reference and a fused path.

This module is the one place that decides which implementation runs. With the ``"fused"`` backend
(the default) each call picks, for the tensors it is given:

- on CUDA, flash-attn's Triton RMSNorm and rotary kernels when ``flash_attn`` imports, its
  FlashAttention-2 too on GPUs before Hopper, and xformers' fused SwiGLU when ``xformers`` imports;
- otherwise PyTorch's own fused operators (``F.rms_norm``, ``F.scaled_dot_product_attention``: on
  Hopper and newer with cuDNN attention first, which is faster there than FlashAttention-2; elsewhere
  PyTorch's FlashAttention kernels), and plain PyTorch for rotary and SwiGLU, which ``torch.compile``
  (``--compile``) fuses. Nothing needs a compiled extension.

The training loss is ``linear_cross_entropy``: the output projection and the cross-entropy chunk by
chunk, so the logits are never held. Where PyTorch has its own chunked ``F.linear_cross_entropy`` and it
measured at least as fast as ours (``LIBRARY_LOSS``: fp32 on CPUs, ``scripts/benchmark_train.py
--loss true``), that runs, unless the z-loss is on, which only ours computes.

Training with ``--document_mask`` keeps attention inside each document (:func:`document_mask`, built once
per micro-batch): on CUDA FlexAttention with a block mask, which skips the blocks the mask leaves empty;
elsewhere SDPA with the dense mask, since PyTorch has no FlexAttention backward on CPUs.

The ``"reference"`` backend runs the textbook formulas; tests compare the two. flash-attn and xformers
are optional: a missing or broken install (no CUDA, a mismatched build) falls back silently to PyTorch.
Every kernel decides through :func:`implementation` (one table, ``KERNELS``), which :func:`describe`
also reads, so the training log names what actually runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

if TYPE_CHECKING:
    from lit_gpt.tokenizer import Boundary

Backend = Literal["fused", "reference"]
AttentionMask = torch.Tensor | BlockMask  # boolean, broadcastable to (B, H, T, S), or FlexAttention's
_backend: Backend = "fused"


def set_backend(backend: Backend) -> None:
    """Choose the implementation of every kernel for the rest of the process."""
    global _backend
    if backend not in ("fused", "reference"):
        raise ValueError(f"Unknown kernel backend {backend!r}; choose 'fused' or 'reference'")
    _backend = backend


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Run a block with another backend, restoring the previous one afterwards."""
    previous = _backend
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


@functools.cache
def _optional_module(name: str) -> ModuleType | None:
    """Import an optional GPU extension, or None if it is absent or unusable on this machine."""
    try:
        return importlib.import_module(name)
    except Exception:  # a CUDA build on a CPU machine fails with OSError or RuntimeError, not ImportError
        return None


# The one table of choices: per kernel, its extension implementation and the module that provides it
# (used on CUDA when it imports), and the PyTorch implementation used otherwise.
KERNELS: dict[str, tuple[str | None, str | None, str]] = {
    "rms_norm": ("flash-attn triton", "flash_attn", "torch.nn.functional.rms_norm"),
    "apply_rotary": ("flash-attn triton", "flash_attn", "pytorch"),
    "swiglu": ("xformers", "xformers.ops", "pytorch"),
    "attention": ("flash-attn 2", "flash_attn", "scaled_dot_product_attention"),
    "linear_cross_entropy": (None, None, "chunked pytorch, gradients in the forward pass"),
}
HALF = (torch.float16, torch.bfloat16)
SDPA_CUDNN_FIRST = "scaled_dot_product_attention (cuDNN first)"
FLEX_DOCUMENTS = "flex_attention (document block mask)"
SDPA_DOCUMENTS = "scaled_dot_product_attention (dense document mask)"
LIBRARY_LOSS_NAME = "torch.nn.functional.linear_cross_entropy (chunked)"
# (device type, dtype) where PyTorch's chunked loss measured at least as fast as ours, forward + backward
# (benchmark_train.py --loss true); GPUs join when measured there.
LIBRARY_LOSS = {("cpu", torch.float32)}


def hopper_or_newer(device: torch.device | str) -> bool:
    """A CUDA device of compute capability 9 or more (H100, H200, B200), where cuDNN attention leads."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 9


def implementation(
    kernel: str,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    masked: bool = False,
    z_loss: bool = False,
    documents: bool = False,
) -> str:
    """Which implementation ``kernel`` runs for tensors of ``dtype`` on ``device``: the decision every kernel
    below takes, and :func:`describe` reports. Attention also depends on whether a mask is given and on
    ``documents`` (masked at document starts), the loss on whether the z-loss is on."""
    if _backend == "reference":
        return "reference"
    extension, module, pytorch = KERNELS[kernel]
    usable = module is not None and torch.device(device).type == "cuda" and _optional_module(module) is not None
    if kernel == "attention" and documents:
        return FLEX_DOCUMENTS if torch.device(device).type == "cuda" else SDPA_DOCUMENTS
    if kernel == "attention":
        if hopper_or_newer(device):
            return SDPA_CUDNN_FIRST  # faster than FlashAttention-2 there; takes masks and fp32 too
        usable = usable and not masked and dtype in HALF  # FlashAttention-2 takes fp16/bf16, no mask
    if kernel == "linear_cross_entropy":
        library = hasattr(F, "linear_cross_entropy") and (torch.device(device).type, dtype) in LIBRARY_LOSS
        return LIBRARY_LOSS_NAME if library and not z_loss else pytorch
    return extension if usable else pytorch


def _extension(kernel: str, tensor: torch.Tensor, masked: bool = False) -> bool:
    return implementation(kernel, tensor.device, tensor.dtype, masked) == KERNELS[kernel][0]


def describe(
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    compiled: bool = False,
    z_loss: bool = False,
    document_mask: bool = False,
) -> dict[str, str]:
    """Which implementation each kernel uses for ``dtype`` tensors on ``device``, for the training log;
    ``compiled`` says whether torch.compile wraps the model (and so fuses the plain PyTorch code), the
    other flags are the training options that change a choice."""
    suffix = " (fused by torch.compile)" if compiled else ""
    names = {
        kernel: implementation(kernel, device, dtype, z_loss=z_loss, documents=document_mask and kernel == "attention")
        for kernel in KERNELS
    }
    return {kernel: name + suffix if name == "pytorch" else name for kernel, name in names.items()}


# ----------------------------------------------------------------------------------------- RMSNorm


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm: normalise in fp32, cast back, then scale."""
    x_fp32 = x.float()
    normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if _backend == "reference":
        return rms_norm_reference(x, weight, eps)
    if _extension("rms_norm", x):
        from flash_attn.ops.triton.layer_norm import rms_norm_fn

        return rms_norm_fn(x, weight, None, eps=eps)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


# ------------------------------------------------------------------------------------------ Rotary


def rope_cache(
    positions: torch.Tensor, head_size: int, base: float, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (len(positions), head_size // 2), computed in fp32 as Hugging Face does;
    ``scaling`` is a "llama3" ``rope_scaling`` dict (Config.rope_scaling) or None."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, device=positions.device).float() / head_size))
    if scaling is not None:
        inv_freq = llama3_frequencies(inv_freq, scaling)
    angles = torch.outer(positions.float(), inv_freq)
    return angles.cos(), angles.sin()


def llama3_frequencies(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1's context extension: frequencies whose wavelength exceeds the original context divided by
    ``low_freq_factor`` are divided by ``factor``, those shorter than it divided by ``high_freq_factor``
    are kept, and those between are interpolated smoothly (``transformers``' llama3 rope type)."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    between = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(between, smoothed, scaled)


def apply_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x of shape (B, T, heads, head_size) with cos/sin of shape (T, head_size // 2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos = cos[:, None, :].to(x.dtype)
    sin = sin[:, None, :].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if _extension("apply_rotary", x):
        from flash_attn.layers.rotary import apply_rotary_emb

        return apply_rotary_emb(x, cos.to(x.dtype), sin.to(x.dtype), interleaved=False)
    return apply_rotary_reference(x, cos, sin)


# ------------------------------------------------------------------------------------------ SwiGLU


def swiglu_reference(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    b_gate: torch.Tensor | None = None,
    b_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Llama MLP: down(silu(gate(x)) * up(x))."""
    return F.linear(F.silu(F.linear(x, w_gate, b_gate)) * F.linear(x, w_up, b_up), w_down, b_down)


def swiglu(x: torch.Tensor, gate: torch.nn.Linear, up: torch.nn.Linear, down: torch.nn.Linear) -> torch.Tensor:
    """The MLP through its three ``nn.Linear`` modules, so that swapping them (float8 training,
    quantisation, LoRA) takes effect; xformers' fused kernel takes their weights instead."""
    if _extension("swiglu", x):
        return _optional_module("xformers.ops").swiglu(
            x, gate.weight, gate.bias, up.weight, up.bias, down.weight, down.bias
        )
    return down(F.silu(gate(x)) * up(x))


# --------------------------------------------------------------------------------------- Attention


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention written out. q: (B, T, H, D); k, v: (B, S, G, D) with H a multiple of G.

    Without ``mask`` the attention is causal (query i sees keys 0..i); otherwise ``mask`` (T, S), or
    (B, 1, T, S) for one mask per sequence, is True where a query may see a key. Returns (B, T, H, D).
    """
    q_per_kv = q.shape[2] // k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    k = k.repeat_interleave(q_per_kv, dim=1)
    v = v.repeat_interleave(q_per_kv, dim=1)
    scores = (q @ k.transpose(-2, -1)).to(torch.promote_types(q.dtype, torch.float32)) / math.sqrt(q.shape[-1])
    if mask is None:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1).to(v.dtype) @ v).transpose(1, 2)


def document_ids(idx: torch.Tensor, boundary: Boundary) -> torch.Tensor:
    """For token ids (B, T), each token's document within its sequence: with BOS before each document, the
    number of BOS tokens up to it; with EOS after each document, the number of EOS tokens before it (an EOS
    belongs to the document it ends). The tokens before the first boundary -- the end of a document that
    began in an earlier block, or a whole block without one -- are document 0, a segment like any other."""
    marks = idx == boundary.id
    counts = marks.cumsum(dim=1)
    return counts if boundary.position == "before" else counts - marks.long()


def dense_document_mask(documents: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T), True where a query may see a key: an earlier or the same position of its document."""
    T = documents.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=documents.device).tril()
    return ((documents[:, :, None] == documents[:, None, :]) & causal)[:, None]


def block_document_mask(documents: torch.Tensor) -> BlockMask:
    """The same mask for FlexAttention: per 128 x 128 tile, whether it is empty, full or partial, so that
    the kernel skips the tiles between documents."""
    B, T = documents.shape

    def same_document_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (documents[b, q] == documents[b, kv]) & (q >= kv)

    return create_block_mask(same_document_causal, B, None, T, T, device=documents.device)


def document_mask(documents: torch.Tensor) -> AttentionMask:
    """The attention mask of :func:`document_ids` ``documents``, in the form the attention kernel chosen
    for their device takes; built once per micro-batch and shared by every layer."""
    if implementation("attention", documents.device, documents=True) == FLEX_DOCUMENTS:
        return block_document_mask(documents)
    return dense_document_mask(documents)


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """FlexAttention is a fused kernel only when compiled (eagerly it runs an unfused reference)."""
    return torch.compile(flex_attention, dynamic=False)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask | None = None) -> torch.Tensor:
    """Causal attention, or attention under ``mask``: a boolean tensor broadcastable to (B, H, T, S), or a
    FlexAttention block mask (:func:`document_mask`)."""
    if isinstance(mask, BlockMask):
        y = _compiled_flex_attention()(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            block_mask=mask,
            enable_gqa=q.shape[2] != k.shape[2],
        )
        return y.transpose(1, 2)
    if _backend == "reference":
        return attention_reference(q, k, v, mask)
    chosen = implementation("attention", q.device, q.dtype, masked=mask is not None)
    if chosen == KERNELS["attention"][0]:
        return _optional_module("flash_attn").flash_attn_func(q, k, v, causal=True)
    backends = contextlib.nullcontext()
    if chosen == SDPA_CUDNN_FIRST:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        backends = sdpa_kernel([*order, SDPBackend.MATH], set_priority=True)
    with backends:
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=q.shape[2] != k.shape[2],
        )
    return y.transpose(1, 2)


# ----------------------------------------------------------------------------------- Cross-entropy


def cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy over targets that are not ``ignore_index``, computed in fp32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=ignore_index)


class LossTerms(NamedTuple):
    """The training loss and, for the log, the z-loss term it includes (``lit_gpt.kernels``)."""

    loss: torch.Tensor  # what training minimises: mean cross-entropy + z_loss x z_term
    z_term: torch.Tensor  # mean logsumexp(logits)^2 over the targets, detached


def linear_cross_entropy_reference(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, z_loss: float = 0.0
) -> LossTerms:
    """The output projection, the mean cross-entropy and the z-loss (PaLM), written out on full logits."""
    logits = (x @ weight.T).reshape(-1, weight.shape[0]).float()
    valid = targets.reshape(-1) != ignore_index
    z_term = (torch.logsumexp(logits, dim=-1)[valid] ** 2).mean()
    return LossTerms(cross_entropy_reference(logits, targets, ignore_index) + z_loss * z_term, z_term.detach())


class _LinearCrossEntropy(torch.autograd.Function):
    """Output projection + cross-entropy (+ z-loss), ``chunk_rows`` positions at a time, never holding all
    logits.

    For each chunk the forward pass computes the logits, the loss and, when gradients are needed, the
    gradients of the loss with respect to the hidden states and the weight; the backward pass only
    scales them. Compared with materialising the (B, T, V) logits and their gradient, this saves two
    tensors of that size and one pass over each. The z-loss ``z_loss x logsumexp(logits)^2`` (which keeps
    the softmax normaliser near 1, against bf16 drift) adds ``2 z_loss x logsumexp x softmax`` to the
    gradient of the logits: the same pass, no extra memory.

    Where the time goes (``scripts/benchmark_train.py``): the three matrix multiplies per chunk. So every
    chunk reuses one logits buffer (a fresh 32-64 MB tensor per chunk costs page faults that slowed the
    forward product by a third on a CPU), the softmax is one fused kernel (written over the logits when
    they are fp32), the logsumexp comes from it (``max - log(max softmax)``: no separate pass that
    exponentiates), and the weight gradient is accumulated by the matrix multiply itself (``addmm_``).
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        ignore_index: int,
        chunk_rows: int,
        z_loss: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        valid = targets != ignore_index
        safe_targets = targets.masked_fill(~valid, 0)
        needs_x, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.empty_like(x) if needs_x else None
        grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight else None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        z_total = torch.zeros((), dtype=torch.float32, device=x.device)
        logits_buffer = x.new_empty(min(chunk_rows, x.shape[0]), weight.shape[0])
        softmax_buffer = (
            logits_buffer if x.dtype == torch.float32 else torch.empty_like(logits_buffer, dtype=torch.float32)
        )
        for start in range(0, x.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            n = min(chunk_rows, x.shape[0] - start)
            logits = torch.mm(x[rows], weight.T, out=logits_buffer[:n])
            largest = logits.amax(-1).float()
            picked = logits.gather(1, safe_targets[rows, None]).squeeze(1).float()
            softmax = torch.softmax(logits, -1, dtype=torch.float32, out=softmax_buffer[:n])
            lse = largest - softmax.amax(-1).log()  # the largest probability is >= 1/V: no underflow
            total += ((lse - picked) * valid[rows]).sum()
            z_total += (lse.square() * valid[rows]).sum()
            if not (needs_x or needs_weight):
                continue
            grad = softmax  # d loss_row / d logits = softmax (1 + 2 z_loss lse) - one_hot
            if z_loss:
                grad.mul_(1 + 2 * z_loss * lse[:, None])
            grad.scatter_add_(1, safe_targets[rows, None], torch.full_like(grad[:, :1], -1.0))
            grad = grad.to(x.dtype)
            keep = valid[rows, None].to(x.dtype)  # ignored rows: zeroed in the (n, d) factors, not in (n, V)
            if needs_x:
                torch.mm(grad, weight, out=grad_x[rows]).mul_(keep)
            if needs_weight:
                _accumulate_product(grad_weight, grad.T, x[rows] * keep, first=start == 0)
        count = valid.sum()
        ctx.save_for_backward(count, *(g for g in (grad_x, grad_weight) if g is not None))
        ctx.weight_dtype, ctx.has = weight.dtype, (needs_x, needs_weight)
        z_term = z_total / count
        ctx.mark_non_differentiable(z_term)
        return total / count + z_loss * z_term, z_term

    @staticmethod
    def backward(
        ctx, grad_output: torch.Tensor, _: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None, None]:
        count, *grads = ctx.saved_tensors
        factor = grad_output / count
        needs_x, needs_weight = ctx.has
        grad_x = grads.pop(0) * factor.to(grads[0].dtype) if needs_x else None
        grad_weight = (grads.pop(0) * factor).to(ctx.weight_dtype) if needs_weight else None
        return grad_x, grad_weight, None, None, None, None


def _accumulate_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """``total (+)= a @ b`` in total's dtype (fp32): in the multiply itself where the operands are fp32 too."""
    if a.dtype != total.dtype:
        product = (a @ b).to(total.dtype)
        total.copy_(product) if first else total.add_(product)
    elif first:
        torch.mm(a, b, out=total)
    else:
        total.addmm_(a, b)


MIN_CHUNK_ROWS = 256
MAX_CHUNKS = 16


def default_chunk_rows(vocab_size: int, rows: int) -> int:
    """Rows per chunk of the loss over ``rows`` positions, a multiple of 64 (262 rows ran slower than 256):
    about 16M logits (64 MB in fp32), but at least MIN_CHUNK_ROWS and at most MAX_CHUNKS chunks. Each chunk
    is a pass over the fp32 weight gradient (1 GB at V = 128,256, d = 2048) and short chunks multiply less
    efficiently: at V = 128,256 on a CPU, 512 rows took 5.6-6.1 s in 128-row chunks, 5.2 s in 256-row
    ones. The loss holds about one fp32 chunk beyond its gradients in fp32, three in bf16."""
    small_vocabulary = (1 << 24) // vocab_size // 64 * 64
    fewest = -(-rows // MAX_CHUNKS)
    return -(-max(small_vocabulary, MIN_CHUNK_ROWS, fewest) // 64) * 64


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
    z_loss: float = 0.0,
) -> LossTerms:
    """Mean cross-entropy of the logits ``x @ weight.T`` (x: (..., d), weight: (V, d)) against ``targets``,
    plus ``z_loss`` times the mean squared logsumexp of the logits.

    The training loss of the model: the (B, T, V) logits are never materialised; a chunk holds
    ``chunk_rows`` positions (default: :func:`default_chunk_rows`), in ours and in PyTorch's alike.
    """
    if _backend == "reference":
        return linear_cross_entropy_reference(x, weight, targets, ignore_index, z_loss)
    chunk_rows = chunk_rows or default_chunk_rows(weight.shape[0], x.numel() // x.shape[-1])
    if implementation("linear_cross_entropy", x.device, x.dtype, z_loss=z_loss > 0) == LIBRARY_LOSS_NAME:
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk_rows)  # its automatic choice is slower
        loss = F.linear_cross_entropy(
            x.reshape(-1, x.shape[-1]), weight, targets.reshape(-1), ignore_index=ignore_index, options=options
        )
        return LossTerms(loss.float(), torch.zeros((), device=x.device))
    loss, z_term = _LinearCrossEntropy.apply(
        x.reshape(-1, x.shape[-1]), weight, targets.reshape(-1), ignore_index, chunk_rows, z_loss
    )
    return LossTerms(loss, z_term)
