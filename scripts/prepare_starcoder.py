"""Tokenize StarCoderData (``<language>/*.parquet``, column ``content``) into packed shards.

A preset of ``prepare_corpus.py``: the same as ``--pattern '*/*.parquet' --text_column content --source
starcoder``, with ``--languages`` choosing the language folders.
"""

from __future__ import annotations

from pathlib import Path

from lit_gpt.cli import run
from lit_gpt.data.corpora import Documents, starcoder_files
from lit_gpt.data.prepare import prepare_and_exit


def prepare(
    source_path: Path = Path("data/starcoderdata"),
    tokenizer_path: Path = Path("checkpoints/Llama-2-7b-hf/tokenizer.model"),
    destination_path: Path | None = None,
    split: str = "train",
    chunk_size: int = 2049 * 1024,
    block_size: int = 2048,
    percentage: float = 1.0,
    num_workers: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    languages: list[str] | None = None,
) -> None:
    """Tokenize StarCoderData into shards named ``{split}_starcoder_{shard_index}_{n}.bin``.

    Rerunning the same command after a crash resumes where it stopped; shards do not depend on
    ``num_workers``. Exits with status 1 if some input file could not be read at all.

    Args:
        source_path: the starcoderdata directory, one sub-directory per language.
        tokenizer_path: a Hugging Face tokenizer.json (Llama 3's), a SentencePiece tokenizer.model
            (TinyLlama uses Llama 2's) or a directory holding either (tokenizer.json first).
        destination_path: where the shards go; default ``data/starcoder/{split}``.
        split: the name given to the shards (StarCoderData has only a training set).
        chunk_size: tokens per shard: a multiple of block_size + 1 (2049 for TinyLlama).
        block_size: the context length of the model to be trained (TinyLlama: 2048); chunk_size is
            checked against it.
        percentage: fraction of the (sorted) input files to use.
        num_workers: tokenizing processes; default: all cores.
        num_shards: number of machines (or SLURM array tasks) sharing the job.
        shard_index: this machine's index in [0, num_shards): it takes every num_shards-th file.
        languages: language directories to use, e.g. ``[python, jupyter-scripts-dedup-filtered]`` for
            TinyLlama v1.1 Math&Code; default: all of them.
    """
    prepare_and_exit(
        starcoder_files(source_path, languages),
        Documents("content"),
        "starcoder",
        tokenizer_path,
        destination_path,
        split,
        chunk_size,
        block_size,
        percentage,
        num_workers,
        num_shards,
        shard_index,
    )


if __name__ == "__main__":
    run(prepare)
