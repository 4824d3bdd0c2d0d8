"""What the loader checks of a shard's content when it first opens it, whatever the index says.

Where the index has the shard's checksum (index version 2), the shard's CRC-32 against it (a bad copy, a
replaced file, bit rot): a match means the content is the indexed one, whose largest token id was already
checked against the model's vocabulary at start-up. Without one (a version-1 index, a shard read by its
header), the largest token id itself, since an id outside the vocabulary would end training with an
IndexError that names no file. Either is a pass over the whole shard (0.8 ns per token for the CRC on one
core), so the pass over the shards that the loader is about to open runs ahead in a background thread
(``zlib.crc32`` and numpy release the GIL) while blocks of the current ones are read. The thread maps
each shard it scans and hands that mapping to the loader (``open``): one mapping per shard, whose pages
the scan has brought in, from a cold disk too. A shard that passed is not checked again by the
same reader (a later epoch reopens it): the check is per shard, reader and job. Each reader (rank,
DataLoader worker) checks the shards it opens; a node's readers share one page cache, so that is one
extra read of each shard per node and job from a shared filesystem. Cost: scripts/benchmark_data.py (h).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lit_gpt.data.shards import checksum, read_shard
from lit_gpt.errors import InvalidInput

AHEAD = 32  # shards whose checks may be in flight or waiting to be collected


class ShardChecks:
    """The content checks of one data source's shards: ``ahead(shards)`` maps and scans them in the
    background, ``open(shard)`` hands over one's mapping (or maps it now), ``check(shard, tokens)`` takes
    its scan (or runs it now) and raises naming the shard if it fails."""

    def __init__(self, directory: Path, names: list[str], checksums: np.ndarray, vocab_size: int | None) -> None:
        self.directory, self.names, self.checksums, self.vocab_size = directory, names, checksums, vocab_size
        self._passed = np.zeros(len(names), dtype=bool)  # checked in this reader: not again
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}  # shard -> its scan: (mapped tokens, value)
        self._scanned: dict[int, int] = {}  # opened, value taken from the scan, check to come

    def __getstate__(self) -> dict:  # a DataLoader worker starts its own thread
        return {k: v for k, v in self.__dict__.items() if k not in ("_pool", "_pending", "_scanned")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool, self._pending, self._scanned = None, {}, {}

    def ahead(self, shards: Iterable[int]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-checks")
        for shard in shards:
            if not self._passed[shard] and shard not in self._pending and len(self._pending) < AHEAD:
                self._pending[shard] = self._pool.submit(self._scan, shard)

    def _scan(self, shard: int) -> tuple[np.ndarray, int]:
        """The shard mapped, and its scan (``_value``): the pages are then in memory for the loader."""
        tokens = read_shard(self.directory / self.names[shard])
        return tokens, self._value(shard, tokens)

    def _value(self, shard: int, tokens: np.ndarray) -> int:
        """The shard's CRC-32 where the index has one to compare with, else its largest token id."""
        if self.checksums[shard] >= 0:
            return checksum(tokens)
        return int(tokens.max()) if len(tokens) else -1

    def open(self, shard: int) -> np.ndarray:
        """The shard's tokens, memory-mapped: the mapping its scan ahead made, if it ran (the loader then
        reads pages the scan has already brought in), else a new one. ``check`` follows."""
        pending = self._pending.pop(shard, None)
        if pending is None:
            return read_shard(self.directory / self.names[shard])
        tokens, self._scanned[shard] = pending.result()
        return tokens

    def check(self, shard: int, tokens: np.ndarray) -> None:
        """Raise naming the shard if ``tokens`` (from ``open``) are not the indexed content, or hold an id
        outside the vocabulary where the index has no checksum; nothing if the shard passed before."""
        if self._passed[shard]:
            return
        path = self.directory / self.names[shard]
        scanned = self._scanned.pop(shard) if shard in self._scanned else self._value(shard, tokens)
        expected = int(self.checksums[shard])
        if expected >= 0 and scanned != expected:
            raise InvalidInput(
                f"{path}: its content is not what was indexed (CRC-32 {scanned:08x}, the index says {expected:08x}): "
                "a bad copy, a replaced file or a damaged disk. Copy the shard again, or if it was replaced on "
                f"purpose, re-index: python scripts/index_shards.py --directory {self.directory}"
            )
        if expected < 0 and self.vocab_size is not None and scanned >= self.vocab_size:
            raise InvalidInput(
                f"{path}: token id {scanned} is outside the model's vocabulary of {self.vocab_size}; were these "
                "shards made with another tokenizer?"
            )
        self._passed[shard] = True
