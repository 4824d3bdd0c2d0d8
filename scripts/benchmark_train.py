"""Training-step throughput, peak memory and distance to the matmul ceiling: our GPT against
transformers' LlamaForCausalLM.

Both models get the same config, weights shape, batch, precision, optimizer (AdamW) and thread count;
each measurement runs in its own process so that peak memory (CUDA peak allocation, or peak RSS on a
CPU) belongs to one model alone. A step is forward, loss, backward and optimizer step. The defaults
are the CPU comparison of the issue tracker: 4 layers, n_embd 256, 8 heads, 2 query groups,
intermediate 704, vocabulary 32000, sequence 256, micro-batch 8, fp32, 2 threads.

    python scripts/benchmark_train.py                      # CPU, eager and compiled, with ratios
    python scripts/benchmark_train.py --profile true       # and where each step's time goes
    python scripts/benchmark_train.py --model_name tiny_LLaMA_1b --model_config '{}' --seq_len 2048 \
        --precision bf16-true --devices cuda \
        --modes '[eager, compile, compile+selective]'      # a GPU: tokens/s per GPU, MFU, peak memory
    python scripts/benchmark_train.py --model_name Llama-3.2-1B --model_config '{n_layer: 2}' --seq_len 256 \
        --micro_batch_size 2 --steps 3 --warmup 1         # Llama 3.2 1B's width and 128k vocabulary, 2 layers
    python scripts/benchmark_train.py --loss true          # the training loss alone: ours vs PyTorch's
    python scripts/benchmark_train.py --document_mask true # ours with and without the document mask

Modes: eager, compile (torch.compile), compile+selective (and selective activation checkpointing: ours
only, transformers has no such mode). The optimizer is fused AdamW for both models. With
``--document_mask true`` the batch holds documents of ``document_tokens`` tokens on average (each
starting with BOS, id 1) and our model is timed without and with the mask (``--document_mask`` of
training) on the same batch.

Every run first times the step's ceiling (:func:`gemm_ceiling`: its matrix multiplies alone, at full
batch, plus the attention kernel) and prints each step as a fraction of it: what is left to gain by
anything other than faster matrix multiplies.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from lit_gpt import GPT, Config, kernels
from lit_gpt.cli import run
from lit_gpt.hf import hf_llama_config
from lit_gpt.monitor import flops_per_token, peak_flops
from lit_gpt.tokenizer import Boundary

CPU_COMPARISON = {"n_layer": 4, "n_embd": 256, "n_head": 8, "n_query_groups": 2, "intermediate_size": 704}
DTYPES = {"32-true": torch.float32, "bf16-true": torch.bfloat16}
BOS = 1  # Llama 2's, and the demo tokenizer's


def hf_model(config: Config):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**hf_llama_config(config, torch.float32), attn_implementation="sdpa"))


def measure(
    which: str,
    config: Config,
    mode: str,
    batch: int,
    seq_len: int,
    precision: str,
    device: str,
    threads: int,
    steps: int,
    warmup: int,
    document_tokens: int | None = None,
    profile: bool = False,
) -> dict:
    """Run training steps in this process and return tokens/s and peak memory in bytes. ``which`` is
    ours, ours+mask (attention inside documents) or transformers; ``document_tokens``: BOS on average
    that often in the batch."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    dtype = DTYPES[precision]
    checkpointing = "selective" if mode.endswith("+selective") else "none"
    model = GPT(config, activation_checkpointing=checkpointing) if which != "transformers" else hf_model(config)
    model = model.to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if mode.startswith("compile") else model
    data = torch.randint(2, config.vocab_size, (batch, seq_len + 1), device=device)
    if document_tokens:
        data[torch.rand(data.shape, device=device) < 1 / document_tokens] = BOS
    boundary = Boundary("<s>", BOS, "before") if which == "ours+mask" else None

    def step() -> None:
        if which != "transformers":
            loss = forward(data[:, :-1], targets=data[:, 1:], boundary=boundary).loss
        else:
            loss = forward(input_ids=data[:, :-1], labels=data[:, :-1], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens_per_s = batch * seq_len * steps / seconds
    peak_flops_per_s = peak_flops(torch.device(device))
    mfu = (
        tokens_per_s * flops_per_token(config.replace(block_size=seq_len)) / peak_flops_per_s
        if peak_flops_per_s
        else None
    )
    result = {"tokens_per_s": tokens_per_s, "peak_memory": peak, "mfu": mfu}
    return result | ({"profile": profiled(step, steps, device)} if profile else {})


MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")


def profiled(step, steps: int, device: str, listed: int = 6) -> dict:
    """Where a step's time goes, by torch.profiler over ``steps`` more steps: milliseconds per step in
    matrix multiplies, in attention kernels and in everything else, with the largest of the rest."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    own: Counter[str] = Counter()
    for event in prof.key_averages():
        name = "compiled kernels" if event.key.startswith("## Call CompiledFxGraph") else event.key
        if name.startswith("autograd::engine::evaluate_function"):
            name = "autograd engine"
        own[name] += (event.self_device_time_total if device == "cuda" else event.self_cpu_time_total) / steps / 1e3
    kinds: Counter[str] = Counter()
    for name, ms in own.items():
        kinds[operation_kind(name)] += ms
    rest = sorted((ms, name) for name, ms in own.items() if operation_kind(name) == "rest")
    return {kind: kinds[kind] for kind in ("matmuls", "attention", "rest")} | {
        "largest": [(name, ms) for ms, name in reversed(rest[-listed:])]
    }


def operation_kind(name: str) -> str:
    """matmuls, attention or rest: the profiler name of a CPU operation or a CUDA kernel, by its name."""
    if name in MATMULS or "gemm" in name.lower():
        return "matmuls"
    if "attention" in name or "flash" in name:
        return "attention"
    return "rest"


def linear_shapes(config: Config) -> list[tuple[int, int]]:
    """(in, out) features of every linear layer of one model, the output projection last."""
    qkv = (config.n_head + 2 * config.n_query_groups) * config.head_size
    per_layer = [
        (config.n_embd, qkv),
        (config.n_head * config.head_size, config.n_embd),
        (config.n_embd, config.intermediate_size),
        (config.n_embd, config.intermediate_size),
        (config.intermediate_size, config.n_embd),
    ]
    return per_layer * config.n_layer + [(config.n_embd, config.padded_vocab_size)]


def fastest(work, device: str, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one untimed call."""
    work()
    best = math.inf
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def linear_seconds(rows: int, n_in: int, n_out: int, dtype: torch.dtype, device: str, repeats: int) -> float:
    """Seconds of one linear layer's three products (forward, input and weight gradients), each fastest of
    ``repeats``, into preallocated outputs."""
    x = torch.randn(rows, n_in, device=device, dtype=dtype)
    w = torch.randn(n_out, n_in, device=device, dtype=dtype)
    g = torch.randn(rows, n_out, device=device, dtype=dtype)
    y, gx, gw = torch.empty_like(g), torch.empty_like(x), torch.empty_like(w)
    products = (
        lambda: torch.mm(x, w.T, out=y),
        lambda: torch.mm(g, w, out=gx),
        lambda: torch.mm(g.T, x, out=gw),
    )
    return sum(fastest(product, device, repeats) for product in products)


def gemm_ceiling(config: Config, batch: int, seq_len: int, dtype: torch.dtype, device: str, repeats: int = 5) -> dict:
    """Seconds per training step that its matrix multiplies alone take: the step's ceiling.

    Each linear layer's three products (forward ``x W^T``, input gradient ``g W``, weight gradient
    ``g^T x``) over all ``batch x seq_len`` rows at once, into preallocated outputs, fastest of
    ``repeats``; plus the attention kernel (forward and backward; its products are inside it) at the
    step's shapes. Whatever else a step spends (norms, activations, softmax, optimizer, allocation)
    is the distance to this ceiling; the output projection is timed unchunked, so chunking it for
    memory counts against the step.
    """
    rows = batch * seq_len
    counts = Counter(linear_shapes(config))
    gemms = sum(
        count * linear_seconds(rows, n_in, n_out, dtype, device, repeats) for (n_in, n_out), count in counts.items()
    )
    q, k, v = (
        torch.randn(batch, seq_len, heads, config.head_size, device=device, dtype=dtype, requires_grad=True)
        for heads in (config.n_head, config.n_query_groups, config.n_query_groups)
    )
    grad_y = torch.randn_like(q)

    def attention() -> None:
        q.grad = k.grad = v.grad = None
        kernels.attention(q, k, v).backward(grad_y)

    attention_s = config.n_layer * fastest(attention, device, repeats)
    return {"gemms": gemms, "attention": attention_s, "total": gemms + attention_s}


def benchmark_loss(rows: int, n_embd: int, vocab_size: int, dtype: torch.dtype, device: str, steps: int) -> None:
    """Seconds per forward + backward of the training loss, ours against PyTorch's, alternating."""
    from lit_gpt import kernels

    x = torch.randn(rows, n_embd, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(vocab_size, n_embd, device=device) / n_embd**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab_size, (rows,), device=device)
    chunk_rows = kernels.default_chunk_rows(vocab_size, rows)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk_rows)  # as lit_gpt.kernels calls it
    candidates = {
        "ours": lambda: kernels._LinearCrossEntropy.apply(x, weight, targets, -100, chunk_rows, 0.0)[0],
        "pytorch": lambda: torch.nn.functional.linear_cross_entropy(x, weight, targets, options=options),
    }
    best = {}
    for _ in range(steps):
        for name, loss in candidates.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best.get(name, math.inf), time.perf_counter() - start)
            x.grad = weight.grad = None
    print(
        f"loss: {rows} x {n_embd} -> {vocab_size}, {dtype}, {device}, chunks of {chunk_rows} rows; fastest of "
        f"{steps}, forward + backward"
    )
    for name, seconds in best.items():
        print(f"  {name:8s} {seconds * 1000:8.1f} ms")
    print(f"  pytorch / ours: {best['pytorch'] / best['ours']:.2f}x the time")


def benchmark_train(
    model_name: str = "tiny_LLaMA_1b",
    model_config: dict | None = None,
    vocab_size: int | None = None,
    seq_len: int = 256,
    micro_batch_size: int = 8,
    precision: str = "32-true",
    devices: str = "cpu",
    threads: int = 2,
    modes: list[str] | None = None,
    steps: int = 10,
    warmup: int = 3,
    worker: str | None = None,
    loss: bool = False,
    document_mask: bool = False,
    document_tokens: int = 1024,
    profile: bool = False,
) -> None:
    """Print tokens/s and peak memory for both models in each mode, and our/their ratios.

    Args:
        model_name: the named config to start from.
        model_config: fields to override; default: the CPU comparison's small shape.
        vocab_size: vocabulary; default: the named config's (32,000 for TinyLlama's, 128,256 for Llama 3's).
        seq_len: tokens per sequence.
        micro_batch_size: sequences per step.
        precision: 32-true or bf16-true.
        devices: cpu or cuda.
        threads: torch threads (intra-op).
        modes: eager, compile and/or compile+selective.
        steps: timed steps.
        warmup: untimed steps first (compilation happens there).
        worker: internal: "ours:eager" etc. (or "ceiling") runs one measurement and prints it as JSON.
        loss: instead, time the training loss alone (output projection + cross-entropy, forward and
            backward, micro_batch_size x seq_len rows of n_embd): ours against PyTorch's chunked
            F.linear_cross_entropy, which lit_gpt.kernels uses where it measures at least as fast.
        document_mask: instead of transformers, time our model with the document mask (training's
            --document_mask) against ours without it, on the same batch.
        document_tokens: with document_mask, the mean document length (SlimPajama's is about 1,000).
        profile: also profile each model's steps (torch.profiler) and print where their time goes:
            matrix multiplies, attention kernels, the rest and its largest operations.
    """
    if loss:
        torch.set_num_threads(threads)
        config = Config.from_name(model_name, **(CPU_COMPARISON if model_config is None else model_config))
        vocab_size = vocab_size or config.padded_vocab_size
        benchmark_loss(micro_batch_size * seq_len, config.n_embd, vocab_size, DTYPES[precision], devices, steps)
        return
    overrides = CPU_COMPARISON if model_config is None else model_config
    config = Config.from_name(model_name, **overrides, block_size=max(seq_len, 16))
    if vocab_size is not None:
        config = config.replace(vocab_size=vocab_size)
    if worker == "ceiling":
        torch.set_num_threads(threads)
        print(json.dumps(gemm_ceiling(config, micro_batch_size, seq_len, DTYPES[precision], devices)))
        return
    if worker is not None:
        which, mode = worker.split(":")
        result = measure(
            which,
            config,
            mode,
            micro_batch_size,
            seq_len,
            precision,
            devices,
            threads,
            steps,
            warmup + (3 if mode.startswith("compile") else 0),
            document_tokens if document_mask else None,
            profile,
        )
        print(json.dumps(result))
        return
    print(
        f"{model_name} {json.dumps(overrides)} vocab {config.padded_vocab_size}, {micro_batch_size} x {seq_len} "
        f"tokens, {precision}, {devices}, {threads} threads, {steps} timed steps"
    )
    if document_mask:
        attention = kernels.implementation("attention", devices, DTYPES[precision], documents=True)
        print(f"documents of {document_tokens} tokens on average; the mask's attention: {attention}")
    ceiling = in_worker("ceiling")
    step_tokens = micro_batch_size * seq_len
    print(
        f"ceiling (the step's matrix multiplies alone): {ceiling['total']:.3f} s per step = "
        f"{step_tokens / ceiling['total']:,.0f} tokens/s (linear layers {ceiling['gemms']:.3f} s, "
        f"attention kernel {ceiling['attention']:.3f} s)"
    )
    for mode in modes or ["eager", "compile"]:
        results = {}
        compared = ("ours", "ours+mask") if document_mask else ("ours", "transformers")
        for which in compared if document_mask or "+" not in mode else ("ours",):
            results[which] = in_worker(f"{which}:{mode}")
        for which, r in results.items():
            mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
            gib = r["peak_memory"] / 2**30
            fraction = ceiling["total"] * r["tokens_per_s"] / step_tokens
            print(
                f"  {mode:17s} {which:12s} {r['tokens_per_s']:12,.0f} tokens/s = {fraction:4.0%} of the ceiling  "
                f"peak {gib:6.2f} GiB{mfu}"
            )
            if "profile" in r:
                t = r["profile"]
                largest = ", ".join(f"{name.removeprefix('aten::')} {ms:.0f}" for name, ms in t["largest"])
                print(
                    f"  {'':17s} {'':12s} ms per step: matmuls {t['matmuls']:.0f}, attention {t['attention']:.0f}, "
                    f"rest {t['rest']:.0f} ({largest})"
                )
        if "ours+mask" in results:
            ratio = results["ours"]["tokens_per_s"] / results["ours+mask"]["tokens_per_s"]
            print(f"  {mode:17s} step time with the mask / without: {ratio:.2f}x")
        if "transformers" not in results:
            continue
        ours, theirs = results["ours"], results["transformers"]
        print(
            f"  {mode:17s} ours / transformers: tokens/s {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x "
            f"(target >= 1.1), peak memory {ours['peak_memory'] / theirs['peak_memory']:.2f}x (target <= 0.75)"
        )


def in_worker(worker: str) -> dict:
    """Run this script's ``--worker`` measurement in a process of its own and return its JSON result."""
    args = sys.argv[1:] + ["--worker", worker]
    output = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


if __name__ == "__main__":
    run(benchmark_train)
