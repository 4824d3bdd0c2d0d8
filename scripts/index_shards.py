"""Write ``index.json`` for a directory of packed shards: made elsewhere (the original TinyLlama scripts,
say), or after shards were removed or replaced on purpose.

With an index, training starts by reading one directory listing and this file instead of opening every
shard on every rank, and refuses token ids outside the model's vocabulary before the first step.
Shards written by ``prepare_slimpajama.py`` / ``prepare_starcoder.py`` are indexed already; re-indexing
their directory replaces the preparation's ``*.index.json`` files by ``index.json`` (after comparing
every shard with the checksum they recorded), so that a removed shard is listed nowhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from lit_gpt.cli import run
from lit_gpt.data.index import index_directory


def index_shards(
    directory: Path, prefix: str = "", tokenizer_path: Path | None = None, num_workers: int | None = None
) -> None:
    """Read every shard once (token count, dtype, largest token id, checksum) and write DIRECTORY/index.json.

    Args:
        directory: the dataset directory.
        prefix: index only the shards whose names start with this (default: all .bin files).
        tokenizer_path: the tokenizer the shards were made with, recorded so that training can check it.
        num_workers: reading processes; default: all cores.
    """
    done = index_directory(directory, prefix, tokenizer_path, num_workers or os.cpu_count() or 1)
    shards = done.index.shards
    dtypes = ", ".join(sorted(set(shards.dtypes)))
    print(
        f"Indexed {len(shards):,} shards ({int(shards.tokens.sum()):,} tokens of {dtypes}, "
        f"largest token id {int(shards.max_ids.max())}) in {done.path}"
    )
    if done.changed:
        print(
            f"{len(done.changed):,} shard(s) differ from the checksum recorded before, now indexed as they are: "
            f"{examples(done.changed)}"
        )
    if done.missing:
        print(
            f"{len(done.missing):,} shard(s) listed before are not there, now listed nowhere: {examples(done.missing)}"
        )
    if done.replaced:
        print(f"Replaced {len(done.replaced):,} index file(s) by {done.path.name}: {examples(done.replaced)}")


def examples(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown:,} more" if len(names) > shown else "")


if __name__ == "__main__":
    run(index_shards)
