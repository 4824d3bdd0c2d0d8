"""Data-path throughput, each figure against its baseline in the same run.

(a) raw SentencePiece batch encoding of the corpus text (all cores): the ceiling for preparation;
(b) scripts/prepare_slimpajama.py end to end, start-up included, on the same text and cores: target
    >= 0.85 x (a);
(c) the training loader in one process, batches of 8 x 2049 tokens: target >= 150M tokens/s;
(d) restoring a loader state at step 1,000,000: target < 2 s.

The corpus is the sample corpus's SlimPajama text, repeated into files of about 4 MB until it holds
``--megabytes`` of text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard
from jsonargparse import CLI

from lit_gpt import Tokenizer
from lit_gpt.data.corpora import Skips, read_slimpajama, slimpajama_files
from lit_gpt.data.loader import create_loader
from lit_gpt.data.shards import read_header

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
        for text in read_slimpajama(path, Skips(), frozenset({"RedPajamaGithub"}))
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


def benchmark_data(tokenizer_path: Path = REPO / "assets" / "tokenizer", megabytes: int = 60) -> None:
    """Print the four figures and their ratios to the targets.

    Args:
        tokenizer_path: the SentencePiece model to tokenize with (the figures in the README use the
            demo tokenizer and, where available, Llama 2's).
        megabytes: text to tokenize; the issue asks for at least 50.
    """
    cores = os.cpu_count() or 1
    tokenizer = Tokenizer(tokenizer_path)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source, texts = build_corpus(workdir, megabytes)
        text_mb = sum(len(t.encode()) for t in texts) / 1e6
        print(
            f"corpus: {text_mb:.0f} MB of text in {len(texts):,} documents; {cores} cores; tokenizer {tokenizer.path}"
        )

        start = time.perf_counter()
        raw_tokens = sum(map(len, tokenizer.encode_batch(texts, bos=True, num_threads=cores)))
        raw_rate = raw_tokens / (time.perf_counter() - start)
        print(f"(a) SentencePiece batch encode:     {raw_rate / 1e6:8.2f} M tokens/s")

        shards = workdir / "shards"
        start = time.perf_counter()
        command = [sys.executable, str(REPO / "scripts" / "prepare_slimpajama.py"), "--source_path", str(source)]
        command += ["--tokenizer_path", str(tokenizer_path), "--destination_path", str(shards)]
        subprocess.run(command, check=True, capture_output=True)
        prep_seconds = time.perf_counter() - start
        written = sum(read_header(p)[1] for p in shards.glob("*.bin"))
        prep_rate = written / prep_seconds
        print(
            f"(b) prepare_slimpajama end to end:  {prep_rate / 1e6:8.2f} M tokens/s "
            f"= {prep_rate / raw_rate:.2f} x (a) (target >= 0.85); {written:,} of {raw_tokens:,} tokens written"
        )

        loader = create_loader([shards], block_size=2048, micro_batch_size=8)
        batches, tokens = iter(loader), 0
        next(batches)
        start = time.perf_counter()
        while time.perf_counter() - start < 3:
            for _ in range(100):
                tokens += next(batches).numel()
        load_rate = tokens / (time.perf_counter() - start)
        print(
            f"(c) loader, one process, 8 x 2049:  {load_rate / 1e6:8.2f} M tokens/s "
            f"= {load_rate / 150e6:.2f} x the 150M target"
        )

        start = time.perf_counter()
        restored = create_loader([shards], block_size=2048, micro_batch_size=8)
        restored.load_state_dict({"batches": 1_000_000, "consumers": {"0": {"draws": 8_000_000, "taken": [8_000_000]}}})
        next(iter(restored))
        restore_seconds = time.perf_counter() - start
        print(f"(d) restore at step 1,000,000:      {restore_seconds:8.3f} s (target < 2 s)")


if __name__ == "__main__":
    CLI(benchmark_data, as_positional=False)
