"""What the loader checks of a shard's content when it first opens it, whatever the index says.

Its checksum against the index's (a bad copy, a replaced file, bit rot) and its largest token id against
the model's vocabulary (an id outside it would end training with an IndexError that names no file).
Both need a pass over the whole shard (0.4 ns per token for the CRC on one core), so the pass over the
shards that the loader is about to open runs ahead in a background thread (``zlib.crc32`` and numpy
release the GIL) while blocks of the current ones are read; it doubles as read-ahead from a cold disk.
The loader alone (scripts/benchmark_data.py (h)) then runs at about 0.76x its unchecked speed on 2
cores: some 380M tokens/s, four orders of magnitude above what a GPU trains on. Each reader (rank,
DataLoader worker) checks the shards it opens; a node's readers share one page cache, so that is one
extra read of each shard per node and epoch from a shared filesystem.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lit_gpt.data.index import scan_shard
from lit_gpt.errors import InvalidInput

AHEAD = 32  # shards whose checks may be in flight or waiting to be collected


class ShardChecks:
    """The content checks of one data source's shards: ``ahead(shards)`` starts them in the background,
    ``check(shard)`` collects one (or runs it now) and raises naming the shard if it fails."""

    def __init__(self, directory: Path, names: list[str], checksums: np.ndarray, vocab_size: int | None) -> None:
        self.directory, self.names, self.checksums, self.vocab_size = directory, names, checksums, vocab_size
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}

    def __getstate__(self) -> dict:  # a DataLoader worker starts its own thread
        return {k: v for k, v in self.__dict__.items() if k not in ("_pool", "_pending")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool, self._pending = None, {}

    def ahead(self, shards: Iterable[int]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-checks")
        for shard in shards:
            if shard not in self._pending and len(self._pending) < AHEAD:
                self._pending[shard] = self._pool.submit(scan_shard, self.directory / self.names[shard])

    def check(self, shard: int) -> None:
        path = self.directory / self.names[shard]
        pending = self._pending.pop(shard, None)
        _, _, largest, actual = pending.result() if pending is not None else scan_shard(path)
        expected = int(self.checksums[shard])
        if expected >= 0 and actual != expected:
            raise InvalidInput(
                f"{path}: its content is not what was indexed (CRC-32 {actual:08x}, the index says {expected:08x}): "
                "a bad copy, a replaced file or a damaged disk. Copy the shard again, or if it was replaced on "
                f"purpose, re-index: python scripts/index_shards.py --directory {self.directory}"
            )
        if self.vocab_size is not None and largest >= self.vocab_size:
            raise InvalidInput(
                f"{path}: token id {largest} is outside the model's vocabulary of {self.vocab_size}; were these "
                "shards made with another tokenizer?"
            )
