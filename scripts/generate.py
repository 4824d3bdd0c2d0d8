"""Continue a prompt with a trained model (a lit, training or Hugging Face checkpoint)."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_gpt.cli import run
from lit_gpt.generation import check_sampling, generate
from lit_gpt.weights import load_model


def main(
    checkpoint_dir: Path,
    prompt: str = "Hello, my name is",
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int = 1234,
    tokenizer_path: Path | None = None,
) -> str:
    """Print the prompt followed by a sampled continuation.

    Args:
        checkpoint_dir: a lit checkpoint directory, a training checkpoint (out_dir/step-XXXXXXXX) or a
            Hugging Face Llama directory.
        prompt: the text to continue.
        max_new_tokens: at most this many new tokens (fewer if the end-of-text token comes first).
        temperature: 0 picks the most likely token each time (greedy); higher values sample more freely.
        top_k: sample only among the k most likely tokens.
        top_p: sample only among the most likely tokens whose probabilities add up to p.
        seed: makes sampling repeatable.
        tokenizer_path: default: the copy of the tokenizer that the checkpoint carries.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)  # before the minutes that loading may take
    model, tokenizer = load_model(checkpoint_dir, tokenizer_path)
    prompt_ids = tokenizer.encode(prompt)
    generator = torch.Generator().manual_seed(seed)
    new = generate(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, tokenizer.eos_id, generator)
    text = tokenizer.decode(prompt_ids + new)
    print(text)
    return text


if __name__ == "__main__":
    run(main)
