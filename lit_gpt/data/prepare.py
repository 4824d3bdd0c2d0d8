"""Tokenize a corpus into packed shards: the one implementation behind every prepare script.

Input files are processed in sorted order and their tokens form one stream, cut into shards of
``chunk_size`` tokens by a single writer; the last shard holds the remainder. Each document carries the
tokenizer's boundary token (``Tokenizer.boundary``), which the index records. Workers only tokenize,
one piece of a file at a time (a parquet row group, a run of JSON lines: :mod:`lit_gpt.data.formats`),
in parallel; results are taken in order, at most two per worker waiting to be written, so memory stays
flat whatever the size of a file and the shards are byte-identical whatever ``num_workers`` is. Each
worker is one process on one core: it encodes on one thread (SentencePiece's ``num_threads=1``; the ``tokenizers``
library's pool switched off, ``one_thread_per_process``), so that ``num_workers`` processes use
``num_workers`` cores and the tokenizer's own thread pool never multiplies them.

Whenever a shard has been written (and at least every ``commit_interval`` seconds) the writer's state --
files and pieces done, next shard number, the tokens not yet in a full shard, the index entries of the
new shards -- is committed, so a rerun after a crash or Ctrl-C resumes there (at a piece within a file)
and produces the same shards as an uninterrupted run. Nothing per file or per commit depends on how
many files or shards exist. A finished job writes its shards' index (``{split}_{source}_{machine}.index.json``).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lit_gpt.data.corpora import Documents
from lit_gpt.data.formats import KINDS, Piece, file_kind, pieces
from lit_gpt.data.index import INDEX_SUFFIX, Index, ShardTable
from lit_gpt.data.shards import ShardWriter, WrittenShard, read_shard, token_dtype, write_shard
from lit_gpt.data.skips import Skips
from lit_gpt.errors import InvalidInput, MissingInput
from lit_gpt.tokenizer import Tokenizer, one_thread_per_process

BATCH_CHARS = 1 << 20  # texts handed to the tokenizer at once
RESULTS_PER_WORKER = 2  # tokenized pieces waiting for the writer, per worker
MAX_FAILED = 100  # unreadable files named in the manifest and the summary (a wrong column fails every file)


@dataclass
class PieceResult:
    tokens: np.ndarray
    documents: int
    skips: Skips
    error: str | None = None


@dataclass
class Progress:
    """What the manifest records: how far the job got and what it has written and skipped."""

    settings: dict
    files_done: int = 0
    pieces_done: int = 0  # of file number files_done; manifests from before pieces have none: 0
    next_shard: int = 0
    pending_tokens: int = 0
    documents: int = 0
    tokens: int = 0
    skips: Skips = field(default_factory=Skips)
    failed_files: list[str] = field(default_factory=list)  # the first MAX_FAILED; skips counts them all
    complete: bool = False


def select_files(files: list[Path], percentage: float, num_shards: int, shard_index: int) -> list[Path]:
    """The first ``percentage`` of the sorted files, then every ``num_shards``-th one from ``shard_index``."""
    if not 0 < percentage <= 1:
        raise InvalidInput(f"percentage must be in (0, 1], got {percentage}")
    if not 0 <= shard_index < num_shards:
        raise InvalidInput(f"shard_index must be in [0, num_shards = {num_shards}), got {shard_index}")
    files = sorted(files)[: math.ceil(len(files) * percentage)]
    return files[shard_index::num_shards]


def _tokenize_piece(piece: Piece, documents: Documents, tokenizer: Tokenizer, dtype: np.dtype) -> PieceResult:
    """Every kept document of a piece with its boundary token (BOS before or EOS after), concatenated."""
    skips = Skips()
    if piece.error is not None:
        return PieceResult(np.empty(0, dtype=dtype), 0, skips, piece.error)
    encoded: list[np.ndarray] = []
    count = 0

    def encode(texts: list[str]) -> None:
        ids = tokenizer.encode_documents(texts, num_threads=1)
        encoded.append(np.fromiter(chain.from_iterable(ids), dtype=dtype, count=sum(map(len, ids))))

    batch: list[str] = []
    size = 0
    for text in documents.texts(piece, skips):
        batch.append(text)
        size += len(text)
        count += 1
        if size >= BATCH_CHARS:
            encode(batch)
            batch, size = [], 0
    if batch:
        encode(batch)
    if piece.truncated is not None:
        skips.add("truncated file", piece.truncated)
    tokens = np.concatenate(encoded) if encoded else np.empty(0, dtype=dtype)
    return PieceResult(tokens, count, skips)


_worker_tokenize: Callable[[Piece], PieceResult] | None = None


def _init_worker(documents: Documents, tokenizer_path: Path, dtype: np.dtype) -> None:
    global _worker_tokenize
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process answers it
    one_thread_per_process()
    tokenizer = Tokenizer(tokenizer_path)
    _worker_tokenize = partial(_tokenize_piece, documents=documents, tokenizer=tokenizer, dtype=dtype)


def _run_in_worker(piece: Piece) -> PieceResult:
    return _worker_tokenize(piece)


class Manifest:
    """The job's committed state: ``{prefix}.manifest.json``, a hidden file of the pending tokens it
    points at, and a hidden log of the shards written (their index entries), which becomes the job's
    index when it finishes. Each piece is written so that a crash at any moment leaves a usable state."""

    def __init__(self, destination: Path, prefix: str) -> None:
        self.destination, self.prefix = destination, prefix
        self.path = destination / f"{prefix}.manifest.json"
        self.log_path = destination / f".{prefix}.shards.jsonl"
        self.index_path = destination / f"{prefix}{INDEX_SUFFIX}"
        self._committed_pending: Path | None = None

    def pending_path(self, progress: Progress) -> Path:
        """Named by the position it was committed at (``.pending.{files}.bin`` at a file's end, as before
        pieces existed, so that an older job's pending tokens are found)."""
        at = f"{progress.files_done}.{progress.pieces_done}" if progress.pieces_done else f"{progress.files_done}"
        return self.destination / f".{self.prefix}.pending.{at}.bin"

    def load(self, settings: dict) -> tuple[Progress, np.ndarray | None]:
        if not self.path.exists():
            return Progress(settings=settings), None
        recorded = json.loads(self.path.read_text())
        progress = Progress(**recorded | {"skips": Skips(**recorded["skips"])})
        # A job from before the reading settings were recorded used the presets' fixed reading.
        progress.settings = {"documents": settings.get("documents")} | progress.settings
        if progress.settings != settings:
            changed = sorted(k for k in settings if settings[k] != progress.settings.get(k))
            raise InvalidInput(
                f"{self.path} records a job with other settings ({', '.join(changed)} differ); "
                "use another destination_path or delete this one to start over"
            )
        pending = read_shard(self.pending_path(progress)) if progress.pending_tokens else None
        if pending is not None and len(pending) != progress.pending_tokens:
            raise InvalidInput(f"{self.path}: pending token file does not match; delete the destination to start over")
        self._committed_pending = self.pending_path(progress) if pending is not None else None
        for stale in self.destination.glob(f".{self.prefix}.pending.*.bin"):  # once per run: left by a crash
            if stale != self._committed_pending:
                stale.unlink()
        self._trim_log(progress.next_shard)
        return progress, pending

    def _trim_log(self, next_shard: int) -> None:
        """Drop log lines of shards written after the last commit: the rerun writes them again."""
        if not self.log_path.exists():
            return
        lines = self.log_path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["number"] < next_shard]
        if len(kept) != len(lines):
            tmp = self.log_path.with_name(f"{self.log_path.name}.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.log_path)

    def commit(self, progress: Progress, pending: np.ndarray, written: list[WrittenShard]) -> None:
        """Pending tokens and the log of new shards first, then the manifest that points at them; each
        write is atomic or append-only, and only the previous pending file is removed (no listing)."""
        new_pending = self.pending_path(progress) if len(pending) else None
        if new_pending is not None and new_pending != self._committed_pending:
            write_shard(new_pending, pending)
        if written:
            with open(self.log_path, "a") as log:
                log.writelines(json.dumps(asdict(shard)) + "\n" for shard in written)
                log.flush()
                os.fsync(log.fileno())
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(asdict(progress), indent=1))
        os.replace(tmp, self.path)
        if self._committed_pending is not None and self._committed_pending != new_pending:
            self._committed_pending.unlink(missing_ok=True)
        self._committed_pending = new_pending

    def write_index(self, tokenizer: Tokenizer) -> None:
        """The job's index, from the log of its shards; the log goes once the index is there."""
        shards = [json.loads(line) for line in self.log_path.read_text().splitlines()] if self.log_path.exists() else []
        table = ShardTable(
            [shard["name"] for shard in shards],
            np.array([shard["tokens"] for shard in shards], dtype=np.int64),
            [shard["dtype"] for shard in shards],
            np.array([shard["max_id"] for shard in shards], dtype=np.int64),
            np.array([shard.get("crc32", -1) for shard in shards], dtype=np.int64),  # logs from before checksums
        )
        Index(table, tokenizer.sha256, tokenizer.boundary.to_dict()).write(self.index_path)
        self.log_path.unlink(missing_ok=True)


def prepare_corpus(
    files: list[Path],
    documents: Documents,
    source: str,
    tokenizer_path: Path,
    destination_path: Path,
    split: str,
    chunk_size: int,
    num_workers: int,
    shard_index: int = 0,
    commit_interval: float = 60.0,
) -> Progress:
    """Tokenize ``files`` (already selected for this machine) into shards in ``destination_path``,
    committing progress after each shard and at least every ``commit_interval`` seconds."""
    if not files:
        raise MissingInput(f"No input files for the {source} {split} split")
    if chunk_size <= 0:
        raise InvalidInput(f"chunk_size must be positive, got {chunk_size}")
    unknown = next((path for path in files if file_kind(path) is None), None)
    if unknown is not None:
        raise InvalidInput(f"{unknown} is not a corpus file: the kinds read are {KINDS}")
    tokenizer = Tokenizer(tokenizer_path)
    dtype = token_dtype(tokenizer.vocab_size)
    print(f"Tokenizer {tokenizer.describe()}; shards of {dtype}")
    destination_path.mkdir(parents=True, exist_ok=True)
    settings = dict(
        source=source,
        split=split,
        shard_index=shard_index,
        chunk_size=chunk_size,
        tokenizer_sha256=tokenizer.sha256,
        files=len(files),
        files_sha256=hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest(),
        documents=documents.settings(),
    )
    manifest = Manifest(destination_path, f"{split}_{source}_{shard_index}")
    progress, pending = manifest.load(settings)
    if progress.complete:
        if not manifest.index_path.exists():  # a job finished before jobs wrote an index
            print(
                f"Complete, but without {manifest.index_path.name}: "
                f"python scripts/index_shards.py --directory {destination_path}"
            )
        print(f"{manifest.path} says this job is complete; nothing to do.")
        print_summary(progress, destination_path)
        return progress
    writer = ShardWriter(destination_path, split, source, shard_index, chunk_size, dtype, progress.next_shard, pending)
    remaining = files[progress.files_done :]
    if progress.files_done or progress.pieces_done:
        print(f"Resuming after {_position(progress, len(files))} ({manifest.path})")

    skips = progress.skips
    bar = tqdm(total=sum(p.stat().st_size for p in remaining), unit="B", unit_scale=True, desc=f"{source} {split}")
    start, documents_read, tokens = time.perf_counter(), 0, 0
    last_commit = time.monotonic()
    committed = _position(progress, len(files))
    read_in_file = 0  # bytes of the current file on disk that its pieces so far reach

    def commit() -> None:
        nonlocal committed
        pending = writer.pending
        progress.next_shard, progress.pending_tokens = writer.next_index, len(pending)
        manifest.commit(progress, pending, writer.written)
        writer.written = []
        committed = _position(progress, len(files))

    upcoming = _pieces(remaining, documents, progress.pieces_done, manifest.path)
    try:
        with _tokenized(upcoming, documents, tokenizer.path, dtype, num_workers) as results:
            for piece, result in results:
                writer.add(result.tokens)
                skips.update(result.skips)
                if result.error is not None:
                    if len(progress.failed_files) < MAX_FAILED:
                        progress.failed_files.append(result.error)
                    skips.add("unreadable file", str(piece.path))
                documents_read += result.documents
                tokens += len(result.tokens)
                progress.documents += result.documents
                progress.tokens += len(result.tokens)
                if piece.last:
                    progress.files_done, progress.pieces_done = progress.files_done + 1, 0
                else:
                    progress.pieces_done += 1
                if writer.written or time.monotonic() - last_commit >= commit_interval:
                    commit()
                    last_commit = time.monotonic()
                elapsed = time.perf_counter() - start
                bar.set_postfix_str(f"{documents_read / elapsed:,.0f} docs/s, {tokens / elapsed:,.0f} tokens/s")
                through = piece.path.stat().st_size if piece.last else piece.through
                bar.update(max(through - read_in_file, 0))
                read_in_file = 0 if piece.last else through
    except KeyboardInterrupt:
        bar.close()
        print(
            f"Interrupted (Ctrl-C): {committed} are committed in {manifest.path}; the same command resumes after them",
            file=sys.stderr,
        )
        sys.exit(130)
    bar.close()
    writer.close()
    commit()
    manifest.write_index(tokenizer)
    progress.complete = True
    commit()
    print_summary(progress, destination_path)
    return progress


def _position(progress: Progress, files: int) -> str:
    pieces = f" and {progress.pieces_done} pieces of the next" if progress.pieces_done else ""
    return f"{progress.files_done} of {files} files{pieces}"


def _pieces(files: list[Path], documents: Documents, pieces_done: int, manifest: Path) -> Iterator[Piece]:
    """The pieces of ``files`` in order, leaving out the first ``pieces_done`` of the first file."""
    for number, path in enumerate(files):
        taken = itertools.islice(pieces(path, documents.columns), pieces_done if number == 0 else 0, None)
        first = next(taken, None)
        if first is None:
            raise InvalidInput(
                f"{path} has fewer than the {pieces_done + 1} pieces that {manifest} counts: it changed since; "
                "delete the destination to start over"
            )
        yield first
        yield from taken


def prepare_and_exit(
    files: list[Path],
    documents: Documents,
    source: str,
    tokenizer_path: Path,
    destination_path: Path | None,
    split: str,
    chunk_size: int,
    block_size: int,
    percentage: float,
    num_workers: int | None,
    num_shards: int,
    shard_index: int,
) -> None:
    """What every prepare script does with its arguments: check them, select this machine's files, apply
    the defaults (``data/{source}/{split}``, all cores), prepare, and exit with 1 if a file was unreadable."""
    if chunk_size <= 0 or chunk_size % (block_size + 1):
        raise InvalidInput(
            f"--chunk_size {chunk_size} is not a multiple of block_size + 1 = {block_size + 1}: training reads "
            f"blocks of that many tokens, so the rest of every shard would go unread; use e.g. "
            f"{(block_size + 1) * 1024} (or set --block_size to the model's context length)"
        )
    progress = prepare_corpus(
        select_files(files, percentage, num_shards, shard_index),
        documents,
        source=source,
        tokenizer_path=tokenizer_path,
        destination_path=destination_path or Path("data") / source / split,
        split=split,
        chunk_size=chunk_size,
        num_workers=num_workers or os.cpu_count() or 1,
        shard_index=shard_index,
    )
    if progress.failed_files:
        sys.exit(1)


@contextlib.contextmanager
def _tokenized(
    upcoming: Iterator[Piece], documents: Documents, tokenizer_path: Path, dtype: np.dtype, num_workers: int
) -> Iterator[Iterator[tuple[Piece, PieceResult]]]:
    """Pieces with their tokens in input order: from a process pool, or in this process for one worker."""
    if num_workers <= 1:
        one_thread_per_process()
        tokenize = partial(_tokenize_piece, documents=documents, tokenizer=Tokenizer(tokenizer_path), dtype=dtype)
        yield ((piece, tokenize(piece)) for piece in upcoming)
        return
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with context.Pool(num_workers, initializer=_init_worker, initargs=(documents, tokenizer_path, dtype)) as pool:
        yield _in_order(pool, upcoming, RESULTS_PER_WORKER * num_workers)


def _in_order(
    pool: multiprocessing.pool.Pool, upcoming: Iterator[Piece], limit: int
) -> Iterator[tuple[Piece, PieceResult]]:
    """Results in input order, with at most ``limit`` pieces handed to the pool and not yet taken: a pool's
    ``imap`` runs ahead of a slow writer without bound and holds every result in memory. A JSON-lines
    piece's bytes are not kept here once handed over."""
    queue: collections.deque = collections.deque()

    def submit(piece: Piece) -> None:
        queue.append((replace(piece, lines=b""), pool.apply_async(_run_in_worker, (piece,))))

    for piece in itertools.islice(upcoming, limit):
        submit(piece)
    while queue:
        piece, result = queue.popleft()
        result = result.get()
        following = next(upcoming, None)
        if following is not None:
            submit(following)
        yield piece, result


def print_summary(progress: Progress, destination: Path) -> None:
    print(
        f"Wrote {progress.tokens:,} tokens from {progress.documents:,} documents of {progress.settings['files']:,} "
        f"files into {progress.next_shard} shards in {destination}"
    )
    for reason, count in sorted(progress.skips.counts.items()):
        print(f"  skipped {count:,} x {reason}, e.g. {'; '.join(progress.skips.examples.get(reason, [])[:3])}")
    for error in progress.failed_files:
        print(f"  could not read: {error}", file=sys.stderr)
    unnamed = progress.skips.counts.get("unreadable file", 0) - len(progress.failed_files)
    if unnamed > 0:
        print(f"  could not read {unnamed:,} more files (counted above)", file=sys.stderr)
