"""Tokenize any corpus -- parquet, JSON lines (plain, .gz, .zst) or Arrow folders -- into packed shards.

    python scripts/prepare_corpus.py --source_path data/fineweb-edu --pattern 'sample/10BT/*.parquet' \
        --source fineweb_edu --tokenizer_path checkpoints/Llama-3.2-1B/tokenizer.json

``prepare_slimpajama.py`` and ``prepare_starcoder.py`` are presets of this script.
"""

from __future__ import annotations

import re
from pathlib import Path

from lit_gpt.cli import run
from lit_gpt.data.corpora import Documents, corpus_files
from lit_gpt.data.prepare import prepare_and_exit
from lit_gpt.errors import InvalidInput


def prepare(
    source_path: Path,
    source: str,
    tokenizer_path: Path = Path("checkpoints/Llama-2-7b-hf/tokenizer.model"),
    pattern: list[str] | str | None = None,
    text_column: str = "text",
    exclude: dict[str, list[str]] | None = None,
    destination_path: Path | None = None,
    split: str = "train",
    chunk_size: int = 2049 * 1024,
    block_size: int = 2048,
    percentage: float = 1.0,
    num_workers: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
) -> None:
    """Tokenize the files of a corpus into shards named ``{split}_{source}_{shard_index}_{n}.bin``.

    The format of each file comes from its name and is checked against its first bytes: ``.parquet``,
    ``.arrow`` (``datasets.save_to_disk``), ``.jsonl`` / ``.ndjson`` / ``.json`` JSON lines, plain or
    ``.gz`` / ``.zst``. Files are taken in sorted order and tokenized a piece at a time (a parquet row
    group, Arrow batches or JSON lines of about 8 MiB), so memory does not grow with a file's size.
    Rerunning the same command after a crash resumes where it stopped; shards do not depend on
    ``num_workers``. Exits with status 1 if some input file could not be read at all.

    Args:
        source_path: a corpus folder (or one file). Without ``pattern`` every corpus file below it is
            read; hidden folders (``hf download``'s ``.cache``) and other files are left out.
        source: the corpus's name in the shard names and the default destination, e.g. ``fineweb_edu``
            (letters, digits, ``-`` and ``_``).
        tokenizer_path: a Hugging Face tokenizer.json (Llama 3's), a SentencePiece tokenizer.model
            (TinyLlama uses Llama 2's) or a directory holding either (tokenizer.json first).
        pattern: a glob pattern relative to ``source_path`` choosing the files, e.g.
            ``'*/train/*.jsonl.zst'`` (``**`` for any depth), or a list of them:
            ``'["data/CC-MAIN-2024-10/*.parquet", "data/CC-MAIN-2024-18/*.parquet"]'``.
        text_column: the field (JSON) or column (parquet, Arrow) holding each document; a dotted path
            reaches into nested records.
        exclude: records to leave out, by field and values (compared as text), e.g.
            ``'{meta.redpajama_set_name: [RedPajamaGithub]}'``; they are counted in the summary.
        destination_path: where the shards go; default ``data/{source}/{split}``.
        split: the name given to the shards (``train``, ``validation``, ...).
        chunk_size: tokens per shard: a multiple of block_size + 1 (2049 for TinyLlama).
        block_size: the context length of the model to be trained; chunk_size is checked against it.
        percentage: fraction of the (sorted) input files to use.
        num_workers: tokenizing processes; default: all cores.
        num_shards: number of machines (or SLURM array tasks) sharing the job.
        shard_index: this machine's index in [0, num_shards): it takes every num_shards-th file.
    """
    if not re.fullmatch(r"[A-Za-z0-9-]+(_[A-Za-z0-9-]+)*", source):
        raise InvalidInput(f"--source {source!r}: use letters, digits, '-' and '_' (it becomes part of shard names)")
    prepare_and_exit(
        corpus_files(source_path, [pattern] if isinstance(pattern, str) else pattern),
        Documents(text_column, exclude or {}),
        source,
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
