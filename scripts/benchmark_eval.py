"""Evaluation speed: our lm-eval adapter against the harness's own Hugging Face backend, same model.

A random model of the given shape is written as a lit checkpoint and converted to Hugging Face; both
backends then run the same sample tasks (scripts/make_sample_tasks.py) with the same batch size and
threads, in this one process, ``--repeats`` times each in turn (the fastest counts): the "scores" case
(multiple choice and whole texts: log-likelihoods) and the "generate" case (greedy generation up to a
stop sequence or 8 new tokens, as BBH, DROP and HumanEval ask). Reported: requests per second and the
ratio, per case.

    python scripts/benchmark_eval.py                       # the demo model's shape, 2 threads, on a CPU
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lit_gpt import GPT, Config, Tokenizer
from lit_gpt.cli import load_script, run

REPO = Path(__file__).resolve().parents[1]


def benchmark_eval(
    model_name: str = "tiny_LLaMA_5M",
    model_config: dict[str, Any] | None = None,
    questions: int = 300,
    texts: int = 30,
    batch_size: int = 16,
    threads: int = 2,
    repeats: int = 2,
    device: str = "cpu",
    cases: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Print requests/s of each backend and their ratio, per case.

    Args:
        model_name: a named config; its vocabulary is cut to the demo tokenizer's 4,096 pieces.
        model_config: config fields to override.
        questions: multiple-choice questions (three requests each), also the generation prompts.
        texts: whole texts scored in windows of the model's length.
        batch_size: sequences per forward pass, for both backends.
        threads: torch threads.
        repeats: runs of each backend, alternating; the fastest counts.
        device: cpu or cuda.
        cases: scores, generate, or both (default).
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager
    from safetensors.torch import save_file

    from lit_gpt.evaluation import GPTEvalModel

    torch.set_num_threads(threads)
    tokenizer = Tokenizer(REPO / "assets" / "tokenizer" / "tokenizer.model")
    config = Config.from_name(model_name, **({"vocab_size": 4096} | (model_config or {})))
    model = GPT(config).eval().to(device)
    tasks = {
        "scores": (["sample_choice", "sample_text"], questions * 3 + texts),
        "generate": (["sample_generate"], questions),
    }
    rates: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lit = tmp / "lit"
        lit.mkdir()
        save_file(model.state_dict(), lit / "model.safetensors")
        (lit / "model_config.json").write_text(json.dumps(config.to_dict()))
        (lit / "tokenizer.model").write_bytes(tokenizer.path.read_bytes())
        scripts = {
            name: load_script(REPO / "scripts" / f"{name}.py")
            for name in ("convert_lit_checkpoint", "make_sample_tasks")
        }
        scripts["convert_lit_checkpoint"].convert_lit_checkpoint(lit, tmp / "hf")
        scripts["make_sample_tasks"].make_sample_tasks(tmp / "tasks", questions, texts)
        manager = TaskManager(include_path=str(tmp / "tasks"))
        backends = {
            "ours": lambda: GPTEvalModel(model, tokenizer, config.block_size, batch_size),
            "hf": lambda: "hf",
        }
        for case in cases or list(tasks):
            names, requests = tasks[case]
            # Generation prompts start with BOS, as ours do, only when the hf backend is asked to add it;
            # its scores need no asking (and in rolling windows it would then hold BOS twice).
            model_args = f"pretrained={tmp / 'hf'},dtype=float32" + (
                ",add_bos_token=True" if case == "generate" else ""
            )
            hf_args = {"model_args": model_args, "device": device, "batch_size": batch_size}
            best: dict[str, float] = {}
            for repeat in range(repeats):
                for name, make in backends.items():
                    start = time.perf_counter()
                    lm_eval.simple_evaluate(
                        model=make(), tasks=names, task_manager=manager, **(hf_args if name == "hf" else {})
                    )
                    seconds = time.perf_counter() - start
                    best[name] = min(best.get(name, seconds), seconds)
                    print(f"{case} run {repeat + 1}/{repeats} {name}: {seconds:.2f} s", flush=True)
            rates[case] = {name: requests / seconds for name, seconds in best.items()}
    print(f"\n{model_name} ({config.n_layer} layers, n_embd {config.n_embd}), batch {batch_size}, {threads} threads")
    for case, rate in rates.items():
        print(
            f"{case}: ours {rate['ours']:,.1f} requests/s, hf {rate['hf']:,.1f} requests/s: "
            f"{rate['ours'] / rate['hf']:.2f}x ({tasks[case][1]} requests)"
        )
    return rates


if __name__ == "__main__":
    run(benchmark_eval)
