"""Evaluate a checkpoint on benchmarks with the Language Model Evaluation Harness (``pip install -e '.[eval]'``).

    python scripts/evaluate.py --checkpoint_dir out/tinyllama/step-01430000 --tasks tinyllama_paper --compare true
    python scripts/evaluate.py --checkpoint_dir out/hf --tasks '[hellaswag, piqa]' --limit 200
    python scripts/evaluate.py --checkpoint_dir DIR --tasks '[my_task]' --include_path my_tasks/   # offline

The checkpoint may be a training checkpoint (written by any number of ranks; read here in one process),
a lit checkpoint or a Hugging Face Llama directory. The task groups of ``lit_gpt/tasks`` run the TinyLlama
paper's tables, each task with the paper's shots: ``tinyllama_commonsense`` (Table 3; ``tinyllama`` is its
old name), ``tinyllama_problem_solving`` (Table 4), ``tinyllama_chinese`` (Table 5) and
``tinyllama_paper`` (all three). The harness's table and the paper's tables (with ``--compare``, the
paper's TinyLlama rows under ours) are printed and written beside the checkpoint as markdown, and the
results as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from lit_gpt.cli import run
from lit_gpt.errors import InvalidInput, MissingInput
from lit_gpt.hub import go_offline_without_hub, hub_errors
from lit_gpt.paper_tables import ALIASES, CODE_TASKS, paper_tables
from lit_gpt.weights import load_model

DTYPES = {"32-true": torch.float32, "bf16-true": torch.bfloat16}
WITH_CODE = ("tinyllama_problem_solving", "tinyllama_paper")  # HumanEval joins these on request


def evaluate(
    checkpoint_dir: Path,
    tasks: list[str] | str = "tinyllama",
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
    include_path: Path | None = None,
    allow_code_execution: bool = False,
    compare: bool = False,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    precision: Literal["32-true", "bf16-true"] | None = None,
    tokenizer_path: Path | None = None,
    output_path: Path | None = None,
    seed: int = 1234,
) -> dict:
    """Run the harness on the checkpoint and print its table and the paper's.

    Args:
        checkpoint_dir: a training checkpoint (out_dir/step-XXXXXXXX), a lit checkpoint or a Hugging Face
            Llama directory.
        tasks: harness task or group names, or one of them; the paper's groups: tinyllama_commonsense
            (or tinyllama), tinyllama_problem_solving, tinyllama_chinese, tinyllama_paper.
        num_fewshot: examples shown before each question, for every task; default: each task's own
            setting (the groups set the paper's).
        limit: examples per task (a fraction if below 1); default: all.
        batch_size: sequences per forward pass.
        include_path: a folder of task definitions (the harness's YAML) and their data, for tasks of your
            own or machines without internet.
        allow_code_execution: run tasks that execute the model's code (HumanEval, which then joins
            tinyllama_problem_solving and tinyllama_paper); do it in a sandbox.
        compare: add the paper's TinyLlama rows (v1.0, v1.1, Math&Code, Chinese) under this model's.
        device: cpu, cuda or cuda:N.
        precision: 32-true or bf16-true; default: bf16-true on GPUs that support it, 32-true otherwise.
        tokenizer_path: default: the copy of the tokenizer that the checkpoint carries.
        output_path: the results JSON (the tables go beside it as .md); default: eval_<checkpoint
            name>.json next to the checkpoint.
        seed: seeds few-shot sampling and generation.
    """
    go_offline_without_hub()
    try:
        import lm_eval
        from lm_eval.utils import make_table
    except ImportError as error:
        raise MissingInput(f"Evaluation needs the harness: pip install -e '.[eval]' ({error})") from None
    from lit_gpt.evaluation import GPTEvalModel, task_manager

    names = task_names(tasks, allow_code_execution)
    manager = task_manager(names, include_path)
    bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    dtype = DTYPES[precision or ("bf16-true" if bf16 else "32-true")]
    model, tokenizer = load_model(checkpoint_dir, tokenizer_path)
    model = model.to(device=device, dtype=dtype)
    adapter = GPTEvalModel(model, tokenizer, model.config.block_size, batch_size)
    if allow_code_execution:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # the gate of the code_eval metric, for this run only
    with hub_errors(names), code_execution_refused():
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
            confirm_run_unsafe_code=allow_code_execution,
        )
    report = "\n\n".join(
        part
        for part in (
            make_table(results).strip()
            + ("\n\n" + make_table(results, "groups").strip() if results.get("groups") else ""),
            paper_tables(results["results"], compare),
            provenance(results, lm_eval.__version__),
        )
        if part
    )
    print(report)
    output_path = output_path or checkpoint_dir.parent / f"eval_{checkpoint_dir.name}.json"
    output_path.write_text(json.dumps(results["results"], indent=2, default=str))
    output_path.with_suffix(".md").write_text(report + "\n")
    print(f"Wrote {output_path} and {output_path.with_suffix('.md')}")
    return results["results"]


def task_names(tasks: list[str] | str, allow_code_execution: bool) -> list[str]:
    """The names to hand the harness: aliases resolved, HumanEval added to the paper's groups or left out
    (saying so) by the code-execution gate."""
    names = [ALIASES.get(name, name) for name in ([tasks] if isinstance(tasks, str) else tasks)]
    if allow_code_execution:
        return names + [task for task in CODE_TASKS if any(name in WITH_CODE for name in names)]
    left_out = [name for name in names if name in CODE_TASKS] or (
        list(CODE_TASKS) if any(name in WITH_CODE for name in names) else []
    )
    names = [name for name in names if name not in CODE_TASKS]
    if left_out:
        why = f"{', '.join(left_out)} runs the code the model writes: --allow_code_execution true includes it"
        if not names:
            raise InvalidInput(f"{why} (run it in a sandbox)")
        print(f"Left out: {why} (run it in a sandbox)")
    return names


@contextlib.contextmanager
def code_execution_refused() -> Iterator[None]:
    """The harness's refusal of a task marked ``unsafe_code`` (one of your own, say) as our one line."""
    try:
        yield
    except ValueError as error:
        unsafe = re.search(r"run task: (\S+) which is marked as unsafe", str(error))
        if unsafe is None:
            raise
        message = f"{unsafe[1]} runs the code the model writes: --allow_code_execution true includes it"
        raise InvalidInput(f"{message} (run it in a sandbox)") from None


def provenance(results: dict, harness_version: str) -> str:
    """What the figures depend on: the harness's version, and each task's version and shots."""
    shots = results.get("n-shot", {})
    versions = results.get("versions", {})
    tasks = ", ".join(
        f"{name} (version {versions.get(name, '?')}, {shots.get(name, '?')}-shot)" for name in sorted(shots)
    )
    return f"lm-eval {harness_version}; tasks: {tasks}"


if __name__ == "__main__":
    run(evaluate)
