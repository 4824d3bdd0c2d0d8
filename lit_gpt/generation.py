"""Text generation with a KV cache: greedy at temperature 0, otherwise sampling with top-k / top-p; and
greedy generation for a batch of prompts at once (benchmarks ask for thousands of short answers)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_gpt.errors import InvalidInput
from lit_gpt.model import GPT


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> int:
    """One token id from the logits of the last position (padded-vocabulary entries included)."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest set that reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(dim=-1), 1, generator=generator))


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse settings that would silently sample nonsense (a negative temperature flips the ranking)."""
    problems = [
        f"{name} must be {rule}, got {value}"
        for name, value, bad, rule in (
            ("max_new_tokens", max_new_tokens, max_new_tokens < 1, "at least 1"),
            ("temperature", temperature, not temperature >= 0, ">= 0 (0 is greedy)"),
            ("top_k", top_k, top_k is not None and top_k < 1, "at least 1, or null"),
            ("top_p", top_p, top_p is not None and not 0 < top_p <= 1, "in (0, 1], or null"),
        )
        if bad
    ]
    if problems:
        raise InvalidInput("; ".join(problems))


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The prompt's continuation (new tokens only), stopping after ``eos_id`` or ``max_new_tokens``."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    total = len(prompt) + max_new_tokens
    if total > model.config.block_size:
        raise InvalidInput(
            f"Prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's block_size "
            f"{model.config.block_size}"
        )
    device = model.lm_head.weight.device
    model.set_kv_cache(batch_size=1, max_seq_length=total)
    try:
        tokens = torch.tensor([prompt], device=device)
        logits = model(tokens, input_pos=torch.arange(len(prompt), device=device))[0, -1]
        new: list[int] = []
        for position in range(len(prompt), total):
            token = sample(logits, temperature, top_k, top_p, generator)
            new.append(token)
            if token == eos_id or position == total - 1:
                break
            logits = model(torch.tensor([[token]], device=device), input_pos=torch.tensor([position], device=device))
            logits = logits[0, -1]
        return new
    finally:
        model.clear_kv_cache()


def greedy_batch(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_id: int | None = None,
    finished: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Each prompt's greedy continuation (new tokens only), all prompts decoded together: left-padded to
    the longest, one forward pass per new token for the whole batch. A row stops after ``eos_id``, at
    ``max_new_tokens``, or once ``finished(its new tokens)`` says so (a stop sequence in its text); the
    batch stops when every row has. The tokens are those of :func:`generate` at temperature 0."""
    check_sampling(max_new_tokens, 0.0, None, None)
    longest = max(len(prompt) for prompt in prompts)
    total = longest + max_new_tokens
    if total > model.config.block_size:
        raise InvalidInput(
            f"Prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's block_size "
            f"{model.config.block_size}"
        )
    device = model.lm_head.weight.device
    tokens = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    filled = torch.ones(len(prompts), total, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt) :] = torch.tensor(prompt, device=device)
        filled[row, : longest - len(prompt)] = False
    model.set_kv_cache(batch_size=len(prompts), max_seq_length=total)
    try:
        logits = model(tokens, input_pos=torch.arange(longest, device=device), filled=filled)[:, -1]
        new: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for position in range(longest, total):
            chosen = logits.argmax(dim=-1)
            for row, token in enumerate(chosen.tolist()):
                if not done[row]:
                    new[row].append(token)
                    done[row] = token == eos_id or bool(finished and finished(new[row]))
            if all(done) or position == total - 1:
                return new
            step = torch.tensor([position], device=device)
            logits = model(chosen[:, None], input_pos=step, filled=filled)[:, -1]
        return new
    finally:
        model.clear_kv_cache()
