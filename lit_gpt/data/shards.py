"""The packed-shard format of Lit-GPT and TinyLlama, so shards from the original scripts load unchanged.

A shard is a 24-byte little-endian header -- magic ``LITPKDS`` (7 bytes), version u64 = 1, dtype code
u8, token count u64 -- followed by that many token ids. Documents are concatenated, each starting with
BOS. The original writer always filled a shard to ``chunk_size`` (padding the last one, or dropping it);
ours writes full shards and then one shorter last shard whose header holds its true length, so no
token is ever padded or lost.

Compatibility. Our reader takes each shard's length from its own header, so shards made by the
original scripts load unchanged. The original reader takes every file's length from the first file's
header, so it reads our full shards but not a job's shorter last shard (leave that one out for it).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_gpt.errors import InvalidInput

MAGIC = b"LITPKDS"
VERSION = 1
HEADER = struct.Struct("<7sQBQ")
DTYPES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float32,
    7: np.float64,
    8: np.uint16,
}
DTYPE_CODES = {np.dtype(dtype): code for code, dtype in DTYPES.items()}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 below 65,500 vocabulary entries (half the disk and page cache), int32 above."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def shard_name(split: str, source: str, writer: int, index: int) -> str:
    return f"{split}_{source}_{writer}_{index:010d}.bin"


def write_shard(path: Path, tokens: np.ndarray) -> int:
    """Write one shard atomically: a crash leaves either the whole file or none at all. Returns the
    checksum of its tokens (:func:`checksum`), computed from the bytes in memory as they are written."""
    if tokens.dtype not in DTYPE_CODES:
        raise TypeError(f"Cannot write tokens of dtype {tokens.dtype} to {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, DTYPE_CODES[tokens.dtype], len(tokens)))
        data = np.ascontiguousarray(tokens)
        f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return checksum(data)


def checksum(tokens: np.ndarray) -> int:
    """CRC-32 of a shard's token bytes (what follows the header): 2 GB/s, enough to notice a bad copy,
    a replaced file or bit rot (the header is checked against the index apart)."""
    return zlib.crc32(np.ascontiguousarray(tokens).view(np.uint8))


def read_header(path: Path) -> tuple[np.dtype, int]:
    """A shard's dtype and token count, after checking the header against the file's size."""
    size = path.stat().st_size
    if size < HEADER.size:
        raise InvalidInput(f"{path}: {size} bytes is shorter than the {HEADER.size}-byte shard header")
    with open(path, "rb") as f:
        magic, version, code, count = HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC:
        raise InvalidInput(f"{path}: not a packed shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise InvalidInput(f"{path}: unsupported shard version {version} (expected {VERSION})")
    if code not in DTYPES:
        raise InvalidInput(f"{path}: unknown dtype code {code} (known: {sorted(DTYPES)})")
    dtype = np.dtype(DTYPES[code])
    expected = HEADER.size + count * dtype.itemsize
    if size != expected:
        raise InvalidInput(
            f"{path}: header says {count} tokens of {dtype} ({expected} bytes with the header) "
            f"but the file has {size} bytes"
        )
    return dtype, count


def read_shard(path: Path) -> np.ndarray:
    """Memory-map a shard's tokens (read-only) after checking its header.

    A plain ndarray over an ``mmap`` rather than ``np.memmap``, whose slicing is several times slower.
    """
    dtype, count = read_header(path)
    if count == 0:
        return np.empty(0, dtype=dtype)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=HEADER.size)


@dataclass(frozen=True)
class WrittenShard:
    """What the dataset index records of a shard, known for free while writing it."""

    number: int
    name: str
    tokens: int
    dtype: str
    max_id: int
    crc32: int


class ShardWriter:
    """Cuts one stream of tokens into shards of ``chunk_size`` tokens, numbered from ``next_index``.

    ``close()`` writes what is left as a last, shorter shard. ``pending`` exposes the buffered tokens
    so that preparation can checkpoint them and resume; ``written`` collects each shard's index entry
    until the caller takes them.
    """

    def __init__(
        self,
        directory: Path,
        split: str,
        source: str,
        writer: int,
        chunk_size: int,
        dtype: np.dtype,
        next_index: int = 0,
        pending: np.ndarray | None = None,
    ) -> None:
        self.directory, self.split, self.source, self.writer = directory, split, source, writer
        self.chunk_size, self.dtype, self.next_index = chunk_size, np.dtype(dtype), next_index
        self._buffer = np.empty(chunk_size, dtype=self.dtype)
        self._filled = 0
        self.written: list[WrittenShard] = []
        if pending is not None:
            self.add(pending)

    @property
    def pending(self) -> np.ndarray:
        return self._buffer[: self._filled].copy()

    def add(self, tokens: np.ndarray) -> None:
        start = 0
        while start < len(tokens):
            take = min(self.chunk_size - self._filled, len(tokens) - start)
            self._buffer[self._filled : self._filled + take] = tokens[start : start + take]
            self._filled += take
            start += take
            if self._filled == self.chunk_size:
                self._flush()

    def close(self) -> None:
        if self._filled:
            self._flush()

    def _flush(self) -> None:
        name = shard_name(self.split, self.source, self.writer, self.next_index)
        tokens = self._buffer[: self._filled]
        crc32 = write_shard(self.directory / name, tokens)
        shard = WrittenShard(self.next_index, name, len(tokens), str(self.dtype), int(tokens.max()), crc32)
        self.written.append(shard)
        self.next_index += 1
        self._filled = 0
