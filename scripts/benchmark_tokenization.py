"""Preparation's tokenization throughput with either tokenizer backend, each figure against its baselines
in the same run, on the same corpus, tokenizer and cores:

(a) the tokenizer library's own batch encoding of all the documents, on all cores (``tokenizers``'
    ``encode_batch_fast`` on its thread pool, or SentencePiece's), in the batches of about 1 MB that
    preparation uses: the ceiling;
(b) scripts/prepare_slimpajama.py end to end (reading, decompressing, encoding, writing shards, start-up
    included): target >= 0.9 x (a);
(c) datatrove's tokenization step (``JsonlReader`` + ``DocumentTokenizer``, one task per core, no
    shuffling) on the same files: our ratio to it (target > 1), when datatrove is installed
    (``pip install datatrove``; a peer for comparison, not a dependency).

Tokens per second and the peak memory of each run (all its processes together) are printed. The corpus
is the sample corpus's SlimPajama text repeated into files of about 4 MB (benchmark_data.py's (a) and (b)
are the first two figures here, on its corpus).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from lit_gpt import Tokenizer
from lit_gpt.cli import run
from lit_gpt.data.corpora import slimpajama_documents, slimpajama_files
from lit_gpt.data.prepare import BATCH_CHARS
from lit_gpt.data.shards import read_header
from lit_gpt.data.skips import Skips

REPO = Path(__file__).resolve().parents[1]


def build_corpus(workdir: Path, megabytes: int) -> tuple[Path, list[str]]:
    """A SlimPajama-layout corpus of at least ``megabytes`` MB of text, and its documents."""
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_sample_corpus.py"), "--destination", str(workdir / "sample")],
        check=True,
        capture_output=True,
    )
    sample = [
        text
        for path in slimpajama_files(workdir / "sample" / "SlimPajama-627B", "train")
        for text in slimpajama_documents(["RedPajamaGithub"]).of_file(path, Skips())
    ]
    source = workdir / "corpus"
    texts: list[str] = []
    file_index = 0
    while sum(map(len, texts)) < megabytes * 1e6:
        lines = [json.dumps({"text": t, "meta": {"redpajama_set_name": "RedPajamaC4"}}) for t in sample]
        path = source / "train" / "chunk1" / f"example_train_{file_index}.jsonl.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress("\n".join(lines).encode()))
        texts.extend(sample)
        file_index += 1
    return source, texts


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, frontier = {pid}, [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier and child not in family]
        family.update(children)
        frontier = children
    total = 0
    for member in family:
        try:
            with open(f"/proc/{member}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident bytes (the whole process tree, sampled every 0.2 s) of ``command``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = process.communicate()[1]
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[1]} failed: {stderr[-2000:]}")
    return time.perf_counter() - start, peak


def batched(texts: list[str]) -> Iterator[list[str]]:
    """The texts in batches of about ``BATCH_CHARS`` characters, as preparation hands them to the tokenizer
    (one batch of all 60 MB would measure the interpreter's conversions more than the tokenizer)."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class Prepared:
    """What (b) measured: tokens written and their rate end to end."""

    tokens: int
    rate: float


def preparation_figures(
    workdir: Path, tokenizer: Tokenizer, megabytes: int, cores: int, target: float = 0.9
) -> tuple[Path, list[str], Path, Prepared]:
    """(a) and (b): the corpus, its documents, the prepared shards and the preparation's figures."""
    source, texts = build_corpus(workdir, megabytes)
    text_mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: {text_mb:.0f} MB of text in {len(texts):,} documents; {cores} cores; {tokenizer.describe()}")

    start = time.perf_counter()
    tokens = sum(len(ids) for batch in batched(texts) for ids in tokenizer.encode_documents(batch, num_threads=cores))
    ceiling = tokens / (time.perf_counter() - start)
    print(f"(a) {tokenizer.backend} batch encode:    {ceiling / 1e6:8.2f} M tokens/s ({cores} threads)")

    shards = workdir / "shards"
    command = [sys.executable, str(REPO / "scripts" / "prepare_slimpajama.py"), "--source_path", str(source)]
    command += ["--tokenizer_path", str(tokenizer.path), "--destination_path", str(shards)]
    seconds, peak = timed([*command, "--num_workers", str(cores)])
    written = sum(read_header(p)[1] for p in shards.glob("*.bin"))
    print(
        f"(b) prepare_slimpajama end to end: {written / seconds / 1e6:8.2f} M tokens/s = "
        f"{written / seconds / ceiling:.2f} x (a) (target >= {target}); {written:,} of {tokens:,} tokens written; "
        f"peak memory {peak / 2**20:,.0f} MiB"
    )
    return source, texts, shards, Prepared(written, written / seconds)


DATATROVE = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.tokens import DocumentTokenizer
source, output, tokenizer, cores = sys.argv[1:5]
LocalPipelineExecutor(
    pipeline=[
        {reader},
        DocumentTokenizer(output, tokenizer_name_or_path=tokenizer, shuffle_documents=False),
    ],
    tasks=int(cores), workers=int(cores), logging_dir=output + "/logs",
).run()
"""
JSONL_ZST_READER = 'JsonlReader(source, glob_pattern="**/*.jsonl.zst", compression="zstd")'


def timed_datatrove(
    reader: str, source: Path, output: Path, tokenizer: Tokenizer, cores: int
) -> tuple[float, int] | None:
    """(c): wall seconds and peak memory of datatrove's ``reader`` + ``DocumentTokenizer`` on ``source``;
    None, with a line saying why, where datatrove cannot run (not installed, not a tokenizer.json)."""
    if tokenizer.backend != "huggingface":
        print("(c) datatrove tokenizes with the tokenizers library only: pass a tokenizer.json")
        return None
    try:
        import datatrove  # noqa: F401
    except ImportError:
        print("(c) datatrove is not installed: pip install datatrove")
        return None
    script = DATATROVE.format(reader=reader)
    return timed([sys.executable, "-c", script, str(source), str(output), str(tokenizer.path), str(cores)])


def benchmark_tokenization(
    tokenizer_path: Path = REPO / "assets" / "tokenizer-bpe", megabytes: int = 60, cores: int | None = None
) -> None:
    """Print the figures and their ratios.

    Args:
        tokenizer_path: the tokenizer (tokenizer.json or tokenizer.model); BENCHMARKS.md's figures use the
            demo's byte-level BPE and its SentencePiece twin.
        megabytes: text to tokenize.
        cores: processes or threads each run gets; default: all.
    """
    cores = cores or os.cpu_count() or 1
    tokenizer = Tokenizer(tokenizer_path)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source, _, _, ours = preparation_figures(workdir, tokenizer, megabytes, cores)
        measured = timed_datatrove(JSONL_ZST_READER, source / "train", workdir / "datatrove", tokenizer, cores)
        if measured is None:
            return
        seconds, peak = measured
        theirs = ours.tokens / seconds  # the same documents; datatrove adds its own special tokens
        print(
            f"(c) datatrove DocumentTokenizer:   {theirs / 1e6:8.2f} M tokens/s; ours = {ours.rate / theirs:.2f} x "
            f"datatrove (target > 1); peak memory {peak / 2**20:,.0f} MiB"
        )


if __name__ == "__main__":
    run(benchmark_tokenization)
