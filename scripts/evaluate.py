"""Evaluate a checkpoint on benchmarks with the Language Model Evaluation Harness (``pip install -e '.[eval]'``).

    python scripts/evaluate.py --checkpoint_dir out/tinyllama/step-01430000 --tasks tinyllama
    python scripts/evaluate.py --checkpoint_dir out/hf --tasks '[hellaswag, piqa]' --limit 200
    python scripts/evaluate.py --checkpoint_dir DIR --tasks '[my_task]' --include_path my_tasks/   # offline

The checkpoint may be a training checkpoint (written by any number of ranks; read here in one process),
a lit checkpoint or a Hugging Face Llama directory. ``--tasks tinyllama`` runs the paper's seven zero-shot
commonsense tasks and prints the paper's figures beside ours. The harness's table is printed and its
results are written as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

from lit_gpt.cli import run
from lit_gpt.errors import MissingInput
from lit_gpt.hub import go_offline_without_hub, hub_errors
from lit_gpt.weights import load_model

DTYPES = {"32-true": torch.float32, "bf16-true": torch.bfloat16}


def evaluate(
    checkpoint_dir: Path,
    tasks: list[str] | Literal["tinyllama"] = "tinyllama",
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
    include_path: Path | None = None,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    precision: Literal["32-true", "bf16-true"] | None = None,
    tokenizer_path: Path | None = None,
    output_path: Path | None = None,
    seed: int = 1234,
) -> dict:
    """Run the harness on the checkpoint and print its table.

    Args:
        checkpoint_dir: a training checkpoint (out_dir/step-XXXXXXXX), a lit checkpoint or a Hugging Face
            Llama directory.
        tasks: harness task names, or "tinyllama": hellaswag, openbookqa, winogrande, arc_challenge,
            arc_easy, boolq and piqa, zero-shot, as in the TinyLlama paper.
        num_fewshot: examples shown before each question; default: the task's own setting (zero-shot
            for the paper's tasks).
        limit: examples per task (a fraction if below 1); default: all.
        batch_size: sequences per forward pass.
        include_path: a folder of task definitions (the harness's YAML) and their data, for tasks of your
            own or machines without internet.
        device: cpu, cuda or cuda:N.
        precision: 32-true or bf16-true; default: bf16-true on GPUs that support it, 32-true otherwise.
        tokenizer_path: default: the copy of the tokenizer that the checkpoint carries.
        output_path: the results JSON; default: eval_<checkpoint name>.json next to the checkpoint.
        seed: seeds few-shot sampling and generation.
    """
    go_offline_without_hub()
    try:
        import lm_eval
        from lm_eval.utils import make_table
    except ImportError as error:
        raise MissingInput(f"Evaluation needs the harness: pip install -e '.[eval]' ({error})") from None
    from lit_gpt.evaluation import PAPER_TASKS, GPTEvalModel, task_manager

    names = list(PAPER_TASKS) if tasks == "tinyllama" else list(tasks)
    manager = task_manager(names, include_path)
    bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    dtype = DTYPES[precision or ("bf16-true" if bf16 else "32-true")]
    model, tokenizer = load_model(checkpoint_dir, tokenizer_path)
    model = model.to(device=device, dtype=dtype)
    adapter = GPTEvalModel(model, tokenizer, model.config.block_size, batch_size)
    with hub_errors(names):
        results = lm_eval.simple_evaluate(
            model=adapter,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    print(make_table(results))
    compared = [name for name in names if name in PAPER_TASKS]
    if compared:
        print(paper_comparison(results["results"], compared))
    output_path = output_path or checkpoint_dir.parent / f"eval_{checkpoint_dir.name}.json"
    output_path.write_text(json.dumps(results["results"], indent=2, default=str))
    print(f"Wrote {output_path}")
    return results["results"]


def paper_comparison(results: dict, names: list[str]) -> str:
    """Our figure next to the TinyLlama paper's (Table 3), in percent, for the paper's tasks."""
    from lit_gpt.evaluation import PAPER_TASKS

    lines = [
        "| task | metric | this checkpoint | TinyLlama v1.0 (paper) | TinyLlama v1.1 (paper) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        metric, v10, v11 = PAPER_TASKS[name]
        ours = results[name].get(f"{metric},none")
        lines.append(f"| {name} | {metric} | {100 * ours:.2f} | {v10:.2f} | {v11:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run(evaluate)
