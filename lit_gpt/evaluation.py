"""Benchmarks through the Language Model Evaluation Harness (``pip install -e '.[eval]'``), on our GPT.

``GPTEvalModel`` is the harness's model interface over a ``GPT``: the harness owns the tasks, prompts,
few-shot sampling and metrics; the adapter only scores and generates text. It tokenizes as training
does (a BOS token before each text) and scores requests in batches sorted by length.

On a model sharded by FSDP2 over several processes, every process runs the harness on all requests
(the harness sees one process), and the adapter spreads the forward passes: batch i goes to rank
i mod world_size, every rank takes part in every round (with a one-token batch when it has none left),
and the scores are gathered, so that each process holds them all and the harness computes the same
metrics everywhere. No process needs a copy of the whole model.

Only this module (and what calls it) imports ``lm_eval``.
"""

from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.distributed as dist
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.evaluator import evaluate
from lm_eval.tasks import TaskManager, get_task_dict
from tqdm import tqdm

from lit_gpt.errors import InvalidInput, MissingInput
from lit_gpt.generation import generate, greedy_batch
from lit_gpt.hub import hub_errors
from lit_gpt.paper_tables import TASKS_FOLDER
from lit_gpt.tokenizer import Tokenizer

# The harness warns, per metric of a task file that names no aggregation or no higher_is_better, that it
# takes the default (mean; higher for accuracies, lower for perplexities): a dozen lines before every table
# of the paper's tasks, about the task files, with nothing to do.
logging.getLogger("lm_eval.api.task").addFilter(lambda record: "is defined, but" not in record.getMessage())
# `datasets` draws a bar per task and split while it builds the split from files already on disk: noise
# before the table (downloads, which are worth watching, have the hub library's own bars).
datasets.disable_progress_bars()

Request = tuple[tuple[str, str], list[int], list[int]]  # (texts, context tokens, continuation tokens)


class GPTEvalModel(TemplateLM):
    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, block_size: int, batch_size: int = 8) -> None:
        """``model``: a GPT, or the same sharded (called identically on every rank); ``block_size``: the
        longest sequence it takes (the context is cut from the left to fit, as the harness's models do)."""
        super().__init__()
        self.model, self.tokenizer, self.block_size, self.scoring_batch = model, tokenizer, block_size, batch_size
        self.ranks = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.my_rank = dist.get_rank() if self.ranks > 1 else 0
        self.model_device = next(model.parameters()).device

    # ----------------------------------------------------------------------------- tokenization

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.boundary.id  # what precedes every training document: its BOS, or the last one's EOS

    @property
    def max_length(self) -> int:
        return self.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        before = self.tokenizer.boundary.position == "before"  # as the exported tokenizer encodes for the hf backend
        return self.tokenizer.encode(string, bos=before and add_special_tokens is not False)

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(tokens)

    # ---------------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, **kwargs: Any) -> list:
        """Per request: the continuation's summed log-probability, and whether greedy decoding yields it."""
        windows = []  # (input tokens, number of continuation tokens at their end)
        for _, context, continuation in requests:
            tokens = (context + continuation)[-(self.block_size + 1) :]
            windows.append((tokens, min(len(continuation), len(tokens) - 1)))
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # longest first
        batches = [order[i : i + self.scoring_batch] for i in range(0, len(order), self.scoring_batch)]
        results: dict[int, tuple[float, bool]] = {}
        rounds = math.ceil(len(batches) / self.ranks)
        for round_ in tqdm(range(rounds), desc="scoring", disable=disable_tqdm or self.my_rank != 0):
            index = round_ * self.ranks + self.my_rank
            mine = batches[index] if index < len(batches) else []
            results.update(self._score_batch([windows[i] for i in mine], mine))
        return [value for _, value in sorted(self._gather(results).items())]

    def _score_batch(self, windows: list[tuple[list[int], int]], ids: list[int]) -> dict[int, tuple[float, bool]]:
        """One forward pass over a right-padded batch (a single token when this rank has nothing left,
        as every rank must take part in each pass of a sharded model), with logits at the continuations'
        positions only."""
        length = max((len(tokens) - 1 for tokens, _ in windows), default=1)
        inputs = torch.zeros(max(len(windows), 1), length, dtype=torch.long)
        scored = torch.zeros(inputs.shape, dtype=torch.bool)
        for row, (tokens, count) in enumerate(windows):
            inputs[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            scored[row, len(tokens) - 1 - count : len(tokens) - 1] = True
        device = self.model_device
        log_probs = self.model(inputs.to(device), logits_at=scored.to(device)).float().log_softmax(dim=-1).cpu()
        scores, start = {}, 0
        for (tokens, count), request in zip(windows, ids, strict=True):
            targets = torch.tensor(tokens[len(tokens) - count :], dtype=torch.long)
            picked = log_probs[start : start + count]
            start += count
            total = float(picked.gather(1, targets[:, None]).sum()) if count else 0.0
            scores[request] = (total, bool((picked.argmax(dim=-1) == targets).all()))
        return scores

    def _gather(self, results: dict[int, Any]) -> dict[int, Any]:
        if self.ranks == 1:
            return results
        everyone: list[dict[int, Any]] = [{} for _ in range(self.ranks)]
        dist.all_gather_object(everyone, results)
        return {key: value for part in everyone for key, value in part.items()}

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """The log-probability of whole texts (perplexity tasks), in windows of the model's length."""
        windows, owners = [], []
        for owner, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(
                lm_eval_utils.make_disjoint_window,
                lm_eval_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.block_size,
                    context_len=1,
                ),
            ):
                windows.append((("", ""), context, continuation))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (score, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[owner] += score
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continuations with the KV cache, cut at the first stop string: greedy ones decoded ``batch_size``
        prompts at a time (longest first, so that a batch pads little; each stops at its stop strings),
        sampled ones (``do_sample``) one by one. Runs on an unsharded model in one process."""
        if self.ranks > 1:
            raise NotImplementedError("Generative tasks run in one process: use scripts/evaluate.py without torchrun")
        asked = []
        for context, settings in (r.args for r in requests):
            until = settings.get("until") or [self.tokenizer.id_to_token(self.eot_token_id)]
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = settings.get("max_gen_toks", 256)
            prompt = self.tok_encode(context)[-(self.block_size - new_tokens) :]
            temperature = settings.get("temperature", 0.0) if settings.get("do_sample") else 0.0
            asked.append((prompt, until, new_tokens, temperature))
        answers: list[str] = [""] * len(asked)
        # A batch shares its stop strings, answer length and temperature (a task's requests do); longest
        # prompts first, so that a batch pads little. Sampled continuations go one by one.
        order = sorted(range(len(asked)), key=lambda i: (*map(str, asked[i][1:]), -len(asked[i][0])))
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else []
            if last and asked[last[0]][1:] == asked[i][1:] and asked[i][3] == 0 and len(last) < self.scoring_batch:
                last.append(i)
            else:
                batches.append([i])
        for batch in tqdm(batches, desc="generating", disable=disable_tqdm):
            prompts = [asked[i][0] for i in batch]
            until, new_tokens, temperature = asked[batch[0]][1:]
            if temperature > 0:
                generated = [generate(self.model, prompts[0], new_tokens, temperature, eos_id=self.eot_token_id)]
            else:

                def stopped(tokens: list[int], until: list[str] = until) -> bool:
                    text = self.tokenizer.decode(tokens)
                    return any(stop in text for stop in until)

                generated = greedy_batch(self.model, prompts, new_tokens, self.eot_token_id, stopped)
            for i, tokens in zip(batch, generated, strict=True):
                text = self.tokenizer.decode(tokens)
                for stop in until:
                    text = text.split(stop)[0]
                answers[i] = text
        return answers


def task_manager(names: list[str], include_path: Path | None) -> TaskManager:
    """The harness's task registry, with the paper's task groups (``lit_gpt/tasks``) and the tasks in
    ``include_path``, once every name is known to it."""
    if include_path is not None and not include_path.is_dir():
        raise MissingInput(f"The task folder {include_path} (--include_path) is not a folder")
    folders = [str(TASKS_FOLDER)] + ([str(include_path)] if include_path else [])
    manager = TaskManager(include_path=folders)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        close = {name: difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.75) for name in unknown}
        hints = "; ".join(f"{name}: did you mean {' or '.join(found)}?" for name, found in close.items() if found)
        raise InvalidInput(
            f"Unknown task(s) {', '.join(unknown)}{' (' + hints + ')' if hints else ''}: `lm-eval ls tasks` lists "
            "the harness's tasks; give tasks of your own with an include path"
        )
    return manager


class TaskEvaluator:
    """Ranked-choice benchmarks during training: the tasks are loaded once, and each evaluation scores the
    first ``limit`` examples of each on the model as it is (sharded: every rank calls it)."""

    def __init__(
        self,
        names: list[str],
        include_path: Path | None,
        limit: int | None,
        tokenizer: Tokenizer,
        block_size: int,
        batch_size: int,
    ) -> None:
        with hub_errors(names):
            self.tasks = get_task_dict(names, task_manager(names, include_path))
        self.limit, self.tokenizer, self.block_size, self.batch_size = limit, tokenizer, block_size, batch_size

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """``eval/<task>/<metric>`` for acc and acc_norm. Leaves every random generator as it found it."""
        adapter = GPTEvalModel(model, self.tokenizer, self.block_size, self.batch_size)
        model.eval()
        with torch.random.fork_rng(devices=[]):
            out = evaluate(
                adapter, self.tasks, limit=self.limit, bootstrap_iters=0, log_samples=False, verbosity="ERROR"
            )
        model.train()
        return {
            f"eval/{task}/{key.split(',')[0]}": float(value)
            for task, metrics in out["results"].items()
            for key, value in metrics.items()
            if key.split(",")[0] in ("acc", "acc_norm")
        }
