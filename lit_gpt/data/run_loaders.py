"""The loaders a run's settings ask for: each training and validation source's blocks, from listings read
once per job, and the check that the tokenizer fits the model and the shards.

Apart from ``lit_gpt.run`` because they need torch, which the settings do not: the training script parses
and checks its command line before importing it.
"""

from __future__ import annotations

from pathlib import Path

from lit_gpt.config import Config
from lit_gpt.data.index import TokenizerRecord
from lit_gpt.data.loader import BlockLoader, ShardedBlocks, SourceListing, create_loader, read_listing
from lit_gpt.errors import InvalidInput
from lit_gpt.run import DataSource, RunConfig
from lit_gpt.schedule import StagePlan
from lit_gpt.tokenizer import load_tokenizer


def read_listings(run: RunConfig) -> dict[tuple[Path, str], SourceListing]:
    """What start-up reads about every training and validation source (directory and prefix): done
    once per job, by rank 0, and handed to the loaders of every rank."""
    sources = {(source.path, source.prefix) for source in [*run.train_data, *run.validation_sets()]}
    return {(path, prefix): read_listing(path, prefix) for path, prefix in sorted(sources)}


def data_source(
    run: RunConfig, config: Config, source: DataSource, listings: dict[tuple[Path, str], SourceListing] | None = None
) -> ShardedBlocks:
    """The blocks of ``source``, from its listing in ``listings`` if there, else read here."""
    listing = (listings or {}).get((source.path, source.prefix))
    return ShardedBlocks(
        source.path,
        config.block_size,
        run.seed,
        prefix=source.prefix,
        vocab_size=config.vocab_size,
        listing=listing,
    )


def training_loader(
    run: RunConfig,
    config: Config,
    plan: StagePlan,
    rank: int,
    world_size: int,
    listings: dict[tuple[Path, str], SourceListing] | None = None,
) -> BlockLoader:
    """Rank ``rank``'s loader over the training sources, with the plan's batch sizes and mixtures."""
    return create_loader(
        [data_source(run, config, source, listings) for source in run.train_data],
        config.block_size,
        run.micro_batch_size,
        global_batch_size=plan.global_batch_size,
        weights=plan.mixture,
        seed=run.seed,
        rank=rank,
        world_size=world_size,
        num_workers=run.num_workers,
    )


def validation_loaders(
    run: RunConfig,
    config: Config,
    rank: int,
    world_size: int,
    listings: dict[tuple[Path, str], SourceListing] | None = None,
) -> dict[str, BlockLoader]:
    """Per validation set, one pass over it split across ranks."""
    return {
        source.name: create_loader(
            [data_source(run, config, source, listings)],
            config.block_size,
            run.micro_batch_size,
            seed=run.seed,
            rank=rank,
            world_size=world_size,
            epochs=1,
            positions=run.eval_blocks,
        )
        for source in run.validation_sets()
    }


def check_tokenizer(run: RunConfig, config: Config, sources: list[ShardedBlocks]) -> None:
    """The tokenizer fits the model, and the shards (where their index says) were made with it and
    carry its document boundary."""
    if run.tokenizer_path is None:
        return
    tokenizer = load_tokenizer(run.tokenizer_path)
    if tokenizer.vocab_size > config.vocab_size:
        raise InvalidInput(
            f"Tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but model {run.model_name} only "
            f"{config.vocab_size}; set --model_config.vocab_size or use another tokenizer"
        )
    ours = TokenizerRecord(tokenizer.sha256, tokenizer.boundary.to_dict())
    for source in sources:
        for index_file, recorded in source.tokenizers.items():
            if not recorded.agrees_with(ours):
                raise InvalidInput(
                    f"{source.directory / index_file} records shards made with another tokenizer ({recorded}) "
                    f"than {tokenizer.path} ({ours}); pass the tokenizer the shards were made with"
                )
