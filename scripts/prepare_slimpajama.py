"""Tokenize SlimPajama-627B (``{split}/chunk*/*.jsonl.zst``) into packed shards, without its GitHub subset.

A preset of ``prepare_corpus.py``: the same as ``--pattern '{split}/chunk*/*.jsonl.zst' --exclude
'{meta.redpajama_set_name: [RedPajamaGithub]}' --source slimpajama``.
"""

from __future__ import annotations

from pathlib import Path

from lit_gpt.cli import run
from lit_gpt.data.corpora import slimpajama_documents, slimpajama_files
from lit_gpt.data.prepare import prepare_and_exit


def prepare(
    source_path: Path = Path("data/SlimPajama-627B"),
    tokenizer_path: Path = Path("checkpoints/Llama-2-7b-hf/tokenizer.model"),
    destination_path: Path | None = None,
    split: str = "train",
    chunk_size: int = 2049 * 1024,
    block_size: int = 2048,
    percentage: float = 1.0,
    num_workers: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    exclude_sets: list[str] | None = None,
) -> None:
    """Tokenize one split of SlimPajama into shards named ``{split}_slimpajama_{shard_index}_{n}.bin``.

    Rerunning the same command after a crash resumes where it stopped; shards do not depend on
    ``num_workers``. Exits with status 1 if some input file could not be read at all.

    Args:
        source_path: the SlimPajama-627B directory, holding ``train/``, ``validation/`` and ``test/``.
        tokenizer_path: a Hugging Face tokenizer.json (Llama 3's), a SentencePiece tokenizer.model
            (TinyLlama uses Llama 2's) or a directory holding either (tokenizer.json first).
        destination_path: where the shards go; default ``data/slimpajama/{split}``.
        split: ``train``, ``validation`` or ``test``.
        chunk_size: tokens per shard: a multiple of block_size + 1 (2049 for TinyLlama).
        block_size: the context length of the model to be trained (TinyLlama: 2048); chunk_size is
            checked against it.
        percentage: fraction of the (sorted) input files to use.
        num_workers: tokenizing processes; default: all cores.
        num_shards: number of machines (or SLURM array tasks) sharing the job.
        shard_index: this machine's index in [0, num_shards): it takes every num_shards-th file.
        exclude_sets: RedPajama sets (``meta.redpajama_set_name``) left out; default: RedPajamaGithub,
            as TinyLlama takes its code from StarCoderData instead.
    """
    prepare_and_exit(
        slimpajama_files(source_path, split),
        slimpajama_documents(["RedPajamaGithub"] if exclude_sets is None else exclude_sets),
        "slimpajama",
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
