"""Show the exact global batch of any optimizer step of a training recipe, without training.

The data order is a function of the data, the seed and the batch schedule only, so the blocks of step
s can be computed from the recipe: the tool to look at what the model saw at a loss spike. It counts
the mixture draws of every earlier position (vectorised; about a minute for step 1,000,000 of the
paper's recipe) and reads only the step's own blocks.

    python scripts/show_batch.py --recipe pretrain/configs/tiny_llama_v1.yaml --step 123456
"""

from __future__ import annotations

import copy
from pathlib import Path

from tqdm import tqdm

from lit_gpt import Tokenizer
from lit_gpt.cli import run
from lit_gpt.data.run_loaders import training_loader
from lit_gpt.errors import InvalidInput
from lit_gpt.run import RunConfig


def show_batch(
    recipe: Path, step: int = 0, world_size: int | None = None, tokens_shown: int = 12, chars_shown: int = 80
) -> None:
    """Print every row of one optimizer step's global batch: which rank and micro-batch reads it, its
    source, shard and block, its first token ids and the start of its text.

    Args:
        recipe: a training recipe (pretrain/configs/*.yaml), read as the training script reads it.
        step: the optimizer step (0 is the first).
        world_size: the number of ranks to lay the batch out for; default: the recipe's devices x num_nodes.
        tokens_shown: token ids printed per row.
        chars_shown: characters of decoded text printed per row.
    """
    settings = RunConfig.from_recipe(recipe, "--num_workers", "0")
    config = settings.model()
    if world_size is None:
        world_size = settings.devices * settings.num_nodes if isinstance(settings.devices, int) else 1
    plan = settings.stage_plan(config, world_size)
    if not 0 <= step < plan.max_steps:
        raise InvalidInput(f"--step must be in [0, {plan.max_steps}) for this recipe, got {step}")

    dataset = training_loader(settings, config, plan, 0, world_size).dataset
    position = plan.positions_before(step)
    with tqdm(total=position, unit="position", desc="counting earlier draws", disable=position < 10**7) as bar:
        state = dataset.state_at(step, position, bar.update)
    drawn, numbers, _ = dataset.step_positions(step, position, state["taken"])
    size = len(drawn)
    names = [source.name for source in settings.train_data]
    weights = ", ".join(
        f"{name} {w:.4f}" for name, w in zip(names, plan.weights(position * config.block_size), strict=True)
    )
    print(
        f"step {step:,} (stage {plan.stages[plan.stage_index(step)].name}): {size} sequences, positions "
        f"{position:,}-{position + size - 1:,}, after {plan.tokens_before(step):,} tokens; mixture {weights}; "
        f"{world_size} rank(s) x {size // world_size // settings.micro_batch_size} micro-batch(es) of "
        f"{settings.micro_batch_size}"
    )
    tokenizer = Tokenizer(settings.tokenizer_path) if settings.tokenizer_path else None
    for rank in range(world_size):
        view = copy.copy(dataset)  # the same sources, read as another rank
        view.rank, view.state = rank, state
        batches = iter(view)
        for micro in range(size // world_size // settings.micro_batch_size):
            batch, _ = next(batches)
            for row, offset in zip(batch.tolist(), view.micro_batch_offsets(size, micro), strict=True):
                source = dataset.sources[drawn[offset]]
                shard, block = source.locate(int(numbers[offset]))
                text = tokenizer.decode(row[:64])[:chars_shown] if tokenizer else ""
                print(
                    f"rank {rank} micro-batch {micro} | position {position + offset:,} | {names[drawn[offset]]} "
                    f"{source.names[shard]} block {block} | ids {row[:tokens_shown]} | {text!r}"
                )


if __name__ == "__main__":
    run(show_batch)
