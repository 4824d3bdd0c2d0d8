"""Preparation from each corpus format, against the tokenizer alone and against datatrove, on the same
documents, tokenizer and cores:

(a) the tokenizer library's batch encoding of all the documents on all cores: the ceiling;
(b) scripts/prepare_corpus.py end to end on the documents as parquet (row groups of 1,000 rows),
    jsonl.zst and plain jsonl files of about 4 MB: tokens/s, ratio to (a) (target >= 0.9) and the peak
    memory of its processes together;
(c) datatrove's ``ParquetReader`` + ``DocumentTokenizer`` (one task per core, no shuffling) on the same
    parquet files: our parquet figure's ratio to it (target > 1), when datatrove is installed
    (``pip install datatrove``; a peer for comparison, not a dependency).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from benchmark_tokenization import REPO, batched, build_corpus, timed, timed_datatrove  # scripts/ is on sys.path

from lit_gpt import Tokenizer
from lit_gpt.cli import run
from lit_gpt.data.shards import read_header

PARQUET_READER = 'ParquetReader(source, glob_pattern="*.parquet", text_key="text")'


def write_formats(workdir: Path, texts: list[str], per_file: int) -> dict[str, Path]:
    """The documents as parquet and as plain JSON lines, in files of ``per_file`` documents."""
    folders = {"parquet": workdir / "parquet", "jsonl": workdir / "jsonl"}
    for folder in folders.values():
        folder.mkdir()
    for number, start in enumerate(range(0, len(texts), per_file)):
        part = texts[start : start + per_file]
        pq.write_table(pa.table({"text": part}), folders["parquet"] / f"{number:05d}.parquet", row_group_size=1000)
        lines = "".join(json.dumps({"text": text}) + "\n" for text in part)
        (folders["jsonl"] / f"{number:05d}.jsonl").write_text(lines)
    return folders


def benchmark_formats(
    tokenizer_path: Path = REPO / "assets" / "tokenizer-bpe", megabytes: int = 60, cores: int | None = None
) -> None:
    """Print the figures and their ratios.

    Args:
        tokenizer_path: the tokenizer (tokenizer.json or tokenizer.model); datatrove needs a tokenizer.json.
        megabytes: text to tokenize, in each format.
        cores: processes or threads each run gets; default: all.
    """
    cores = cores or os.cpu_count() or 1
    tokenizer = Tokenizer(tokenizer_path)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        zst, texts = build_corpus(workdir, megabytes)
        per_file = len(texts) * 4 // megabytes  # about 4 MB of text per file, as the jsonl.zst files
        folders = write_formats(workdir, texts, per_file) | {"jsonl.zst": zst}
        text_mb = sum(len(t.encode()) for t in texts) / 1e6
        print(f"corpus: {text_mb:.0f} MB of text in {len(texts):,} documents; {cores} cores; {tokenizer.describe()}")

        start = time.perf_counter()
        encoded = tokenizer.encode_documents
        tokens = sum(len(ids) for batch in batched(texts) for ids in encoded(batch, num_threads=cores))
        ceiling = tokens / (time.perf_counter() - start)
        print(f"(a) {tokenizer.backend} batch encode:  {ceiling / 1e6:8.2f} M tokens/s ({cores} threads)")

        rates = {}
        for kind, folder in folders.items():
            shards = workdir / f"shards-{kind}"
            command = [sys.executable, str(REPO / "scripts" / "prepare_corpus.py"), "--source_path", str(folder)]
            command += ["--source", "bench", "--tokenizer_path", str(tokenizer.path), "--destination_path", str(shards)]
            seconds, peak = timed([*command, "--num_workers", str(cores)])
            written = sum(read_header(p)[1] for p in shards.glob("*.bin"))
            rates[kind] = written / seconds
            print(
                f"(b) prepare_corpus, {kind:9s}:  {rates[kind] / 1e6:8.2f} M tokens/s = {rates[kind] / ceiling:.2f} x "
                f"(a) (target >= 0.9); {written:,} tokens; peak memory {peak / 2**20:,.0f} MiB"
            )
        measured = timed_datatrove(PARQUET_READER, folders["parquet"], workdir / "datatrove", tokenizer, cores)
        if measured is None:
            return
        seconds, peak = measured
        theirs = tokens / seconds  # the same documents; datatrove adds its own special tokens
        print(
            f"(c) datatrove on the parquet files: {theirs / 1e6:7.2f} M tokens/s; ours (parquet) = "
            f"{rates['parquet'] / theirs:.2f} x datatrove (target > 1); peak memory {peak / 2**20:,.0f} MiB"
        )


if __name__ == "__main__":
    run(benchmark_formats)
