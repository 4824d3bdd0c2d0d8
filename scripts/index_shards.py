"""Write ``index.json`` for a directory of packed shards made elsewhere (the original TinyLlama scripts, say).

With an index, training starts by reading one directory listing and this file instead of opening every
shard on every rank, and refuses token ids outside the model's vocabulary before the first step.
Shards written by ``prepare_slimpajama.py`` / ``prepare_starcoder.py`` are indexed already.
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
    path, index = index_directory(directory, prefix, tokenizer_path, num_workers or os.cpu_count() or 1)
    shards = index.shards
    dtypes = ", ".join(sorted(set(shards.dtypes)))
    print(
        f"Indexed {len(shards):,} shards ({int(shards.tokens.sum()):,} tokens of {dtypes}, "
        f"largest token id {int(shards.max_ids.max())}) in {path}"
    )


if __name__ == "__main__":
    run(index_shards)
