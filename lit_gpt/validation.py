"""What training measures besides its loss, at its intervals: the validation loss of each validation set
(the same blocks every time, on any number of ranks) and benchmark scores through the harness."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lit_gpt.config import Config
from lit_gpt.data.loader import BlockLoader
from lit_gpt.errors import InvalidInput
from lit_gpt.hub import go_offline_without_hub
from lit_gpt.rank_zero import say
from lit_gpt.run import RunConfig
from lit_gpt.tokenizer import load_tokenizer


@dataclass
class Evaluations:
    """What training measures besides its loss: validation sets (with their weights) and benchmarks."""

    val_loaders: dict[str, BlockLoader]
    weights: dict[str, float]
    benchmarks: Callable[[torch.nn.Module], dict[str, float]] | None

    def run(self, fabric: Any, model: torch.nn.Module, validation: bool, tasks: bool, step: int) -> dict[str, float]:
        """Validation losses (per set and their weighted mean ``val_loss``) and/or benchmark scores."""
        metrics: dict[str, float] = {}
        if validation:
            losses = {name: validate(fabric, model, loader) for name, loader in self.val_loaders.items()}
            total = sum(self.weights.values())
            val_loss = sum(self.weights[name] * loss for name, loss in losses.items()) / total
            metrics |= {"val_loss": val_loss, "val_ppl": math.exp(val_loss)}
            each = ""
            if len(losses) > 1:
                for name, loss in losses.items():
                    metrics |= {f"val/{name}/loss": loss, f"val/{name}/ppl": math.exp(loss)}
                each = "".join(f" | {name} {loss:.4f}" for name, loss in losses.items())
            say(fabric, f"step {step:>7,} | validation loss {val_loss:.4f} | perplexity {math.exp(val_loss):.2f}{each}")
        if tasks:
            scores = self.benchmarks(model)
            metrics |= scores
            say(fabric, f"step {step:>7,} | " + " | ".join(f"{name} {value:.4f}" for name, value in scores.items()))
        return metrics


def task_evaluator(run: RunConfig, config: Config) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """The benchmarks of ``--eval_tasks``, loaded (and their names checked) before training starts."""
    if not run.eval_tasks:
        return None
    if run.tokenizer_path is None:
        raise InvalidInput("--eval_tasks needs --tokenizer_path: the benchmarks are text")
    go_offline_without_hub()
    try:
        from lit_gpt.evaluation import TaskEvaluator
    except ImportError as error:
        raise InvalidInput(f"--eval_tasks needs the harness: pip install -e '.[eval]' ({error})") from None
    from lit_gpt.paper_tables import ALIASES, CODE_TASKS

    names = [ALIASES.get(name, name) for name in run.eval_tasks]
    if set(names) & set(CODE_TASKS):
        raise InvalidInput(
            f"--eval_tasks {', '.join(sorted(set(names) & set(CODE_TASKS)))} runs the code the model writes: not "
            "during training; scripts/evaluate.py --allow_code_execution true runs it on a checkpoint"
        )
    return TaskEvaluator(
        names,
        run.eval_tasks_include_path,
        run.eval_tasks_limit,
        load_tokenizer(run.tokenizer_path),
        config.block_size,
        run.micro_batch_size,
    )


@torch.no_grad()
def validate(fabric: Any, model: torch.nn.Module, loader: BlockLoader) -> float:
    """Mean loss per token over the loader's blocks (the first ``--eval_blocks`` of the validation set,
    split across ranks): the same blocks every time, and the same on any number of ranks.

    A rank with fewer validation blocks than its share runs padding batches with weight zero, since
    every rank must take part in each sharded forward pass.
    """
    model.eval()
    loader.reset()
    batches = list(loader)
    block_tokens = batches[0].shape[1] if batches else loader.dataset.block_tokens
    rounds = int(fabric.all_reduce(torch.tensor(len(batches), device=fabric.device), reduce_op="max").item())
    total = torch.zeros(2, device=fabric.device, dtype=torch.float64)  # summed loss x tokens, tokens
    for i in range(rounds):
        real = i < len(batches)
        batch = (batches[i] if real else torch.zeros(1, block_tokens, dtype=torch.long)).to(fabric.device)
        loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
        tokens = batch[:, 1:].numel() if real else 0
        total += torch.stack([loss.double() * tokens, torch.tensor(tokens, device=fabric.device, dtype=torch.float64)])
    total = fabric.all_reduce(total, reduce_op="sum")
    model.train()
    return (total[0] / total[1]).item()
