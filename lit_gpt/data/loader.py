"""The training loader: blocks of ``block_size + 1`` tokens from packed shards, mixed, sharded, resumable.

Order. A dataset directory's blocks are enumerated shard by shard. Each epoch shuffles the shard order,
groups the shards into windows of ``window`` shards and permutes the blocks inside each window (all
seeded by ``(seed, epoch)``), which gives one permutation of all blocks per epoch; the epochs follow
one another into an endless stream of positions.

Sharding. Each (rank, DataLoader worker) pair is a *consumer*; consumer ``c`` of ``C`` takes positions
``c, c + C, c + 2C, ...`` of that stream. Every block of an epoch is therefore read by exactly one
consumer, exactly once, whatever the world size, worker count or shard count.

Mixing. For its k-th block a consumer draws a source with the weights ``weights(tokens)``, where
``tokens = k * C * block_size`` is the number of training tokens all consumers together have drawn
before it (they advance in lockstep), so a mixture can change with training progress. The draw is a
pure function of ``(seed, consumer, k)``.

Resuming. A consumer's whole state is k and how many blocks it took from each source; a position maps
to a block through one permutation, so restoring any state costs O(1) (no replay).
"""

from __future__ import annotations

import bisect
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lit_gpt.data.shards import read_header, read_shard

Weights = Sequence[float] | Callable[[int], Sequence[float]]
DRAWS_PER_SEED = 4096


class ShardedBlocks:
    """The blocks of one dataset directory and their shuffled order in each epoch."""

    def __init__(self, directory: Path, block_size: int, seed: int = 42, window: int = 8) -> None:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"Dataset directory {directory} does not exist")
        # Hidden files are a preparation job's pending tokens, not shards.
        self.paths = sorted(p for p in directory.glob("*.bin") if not p.name.startswith("."))
        if not self.paths:
            raise FileNotFoundError(f"Dataset directory {directory} holds no .bin shards")
        self.block_tokens, self.seed, self.window = block_size + 1, seed, window
        headers = [read_header(path) for path in self.paths]
        for path, (dtype, _) in zip(self.paths, headers, strict=True):
            if dtype.kind not in "iu" or dtype != headers[0][0]:
                expected = headers[0][0]
                raise ValueError(f"{path}: tokens of dtype {dtype}; a dataset needs one integer dtype ({expected})")
        self.counts = np.array([count for _, count in headers])
        self.blocks_per_shard = self.counts // self.block_tokens
        self.num_blocks = int(self.blocks_per_shard.sum())
        if self.num_blocks == 0:
            raise ValueError(f"No shard in {directory} holds a whole block of {self.block_tokens} tokens")
        unused = int((self.counts % self.block_tokens).sum())
        if unused:
            warnings.warn(
                f"{directory}: {unused:,} tokens at shard ends do not fill a block of {self.block_tokens} "
                f"tokens and are not read ({unused / self.counts.sum():.4%} of the data)",
                stacklevel=2,
            )
        self._make_caches()

    def _make_caches(self) -> None:
        """Open shards and recent permutations, kept per object (and rebuilt in a spawned worker)."""
        self._open = functools.lru_cache(maxsize=2 * self.window)(read_shard)
        self._epoch_layout = functools.lru_cache(maxsize=2)(self._compute_epoch_layout)
        self._window = functools.lru_cache(maxsize=4)(self._compute_window)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_open", "_epoch_layout", "_window")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_caches()

    def _compute_epoch_layout(self, epoch: int) -> tuple[np.ndarray, list[int]]:
        """Shard order and cumulative block counts of the windows, for one epoch."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))
        window_blocks = np.add.reduceat(self.blocks_per_shard[order], np.arange(0, len(order), self.window))
        return order, [0, *np.cumsum(window_blocks).tolist()]

    def _compute_window(self, epoch: int, window: int) -> tuple[list[int], list[int], list[int]]:
        """The shards of one window, their cumulative block counts, and the window's block permutation."""
        order, _ = self._epoch_layout(epoch)
        shards = order[window * self.window : (window + 1) * self.window]
        cumulative = [0, *np.cumsum(self.blocks_per_shard[shards]).tolist()]
        permutation = np.random.default_rng([self.seed, epoch, window]).permutation(cumulative[-1])
        return shards.tolist(), cumulative, permutation.tolist()

    def locate(self, position: int) -> tuple[int, int]:
        """(shard index, block index inside the shard) of a position in the endless stream."""
        epoch, offset = divmod(position, self.num_blocks)
        _, starts = self._epoch_layout(epoch)
        window = bisect.bisect_right(starts, offset) - 1
        shards, cumulative, permutation = self._window(epoch, window)
        index = permutation[offset - starts[window]]
        slot = bisect.bisect_right(cumulative, index) - 1
        return shards[slot], index - cumulative[slot]

    def read(self, position: int, out: np.ndarray) -> None:
        shard, block = self.locate(position)
        start = block * self.block_tokens
        out[:] = self._open(self.paths[shard])[start : start + self.block_tokens]


class MixedBlockDataset(IterableDataset):
    """Batches (micro_batch_size, block_size + 1) of int64 for one rank, each with its consumer's state.

    ``epochs`` limits the stream to that many passes over the sources (for evaluation); the last
    batch may then be shorter. ``None`` streams forever.
    """

    def __init__(
        self,
        sources: list[ShardedBlocks],
        weights: Weights,
        micro_batch_size: int,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
    ) -> None:
        self.sources, self.weights, self.micro_batch_size = sources, weights, micro_batch_size
        self.seed, self.rank, self.world_size, self.epochs = seed, rank, world_size, epochs
        self.block_tokens = sources[0].block_tokens
        if any(source.block_tokens != self.block_tokens for source in sources):
            raise ValueError("All sources of a mixture must use the same block size")
        self.states: dict[int, dict] = {}
        self.worker_offset = 0
        self._check_weights(0)

    def _check_weights(self, tokens: int) -> np.ndarray:
        weights = np.asarray(self.weights(tokens) if callable(self.weights) else self.weights, dtype=np.float64)
        if weights.shape != (len(self.sources),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"Mixture weights at {tokens:,} tokens must be {len(self.sources)} non-negative numbers "
                f"with a positive sum, got {weights.tolist()}"
            )
        return np.cumsum(weights / weights.sum())

    def consumers(self) -> tuple[int, int]:
        """(this worker's consumer index, number of consumers)."""
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        logical = (worker + self.worker_offset) % workers
        return self.rank * workers + logical, self.world_size * workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, dict]]:
        consumer, num_consumers = self.consumers()
        state = self.states.get(consumer, {"draws": 0, "taken": [0] * len(self.sources)})
        draws, taken = state["draws"], list(state["taken"])
        uniforms, uniforms_seed = None, -1
        cumulative = None if callable(self.weights) else self._check_weights(0)
        while True:
            batch = np.empty((self.micro_batch_size, self.block_tokens), dtype=np.int64)
            rows = 0
            while rows < self.micro_batch_size:
                source = 0
                if len(self.sources) > 1:
                    if draws // DRAWS_PER_SEED != uniforms_seed:
                        uniforms_seed = draws // DRAWS_PER_SEED
                        uniforms = np.random.default_rng([self.seed, consumer, uniforms_seed]).random(DRAWS_PER_SEED)
                    if callable(self.weights):
                        cumulative = self._check_weights(draws * num_consumers * (self.block_tokens - 1))
                    drawn = np.searchsorted(cumulative, uniforms[draws % DRAWS_PER_SEED], side="right")
                    source = min(int(drawn), len(self.sources) - 1)
                position = consumer + taken[source] * num_consumers
                if self.epochs is not None and position >= self.epochs * self.sources[source].num_blocks:
                    break
                self.sources[source].read(position, batch[rows])
                taken[source] += 1
                draws += 1
                rows += 1
            if rows:
                yield torch.from_numpy(batch[:rows]), consumer, {"draws": draws, "taken": list(taken)}
            if rows < self.micro_batch_size:
                return


class BlockLoader:
    """Iterates one rank's batches through a torch DataLoader and remembers the exact position.

    ``state_dict()`` holds each consumer's state and the number of batches taken; with it a new
    loader continues with exactly the batches the old one would have produced next.
    """

    def __init__(self, dataset: MixedBlockDataset, num_workers: int = 0) -> None:
        self.dataset, self.num_workers = dataset, num_workers
        self.batches = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        workers = max(self.num_workers, 1)
        self.dataset.worker_offset = self.batches % workers
        if self.num_workers == 0:  # skip the DataLoader's per-batch conversions
            loader = iter(self.dataset)
        else:
            loader = DataLoader(
                self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available()
            )
        for batch, consumer, state in loader:
            self.dataset.states[int(consumer)] = state
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        return {"batches": self.batches, "consumers": {str(k): v for k, v in self.dataset.states.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.batches = state["batches"]
        self.dataset.states = {int(k): v for k, v in state["consumers"].items()}


def create_loader(
    sources: Sequence[tuple[Path, float]] | Sequence[Path],
    block_size: int,
    micro_batch_size: int,
    weights: Weights | None = None,
    seed: int = 42,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    window: int = 8,
    epochs: int | None = None,
) -> BlockLoader:
    """A loader over dataset directories, given as (directory, weight) pairs or as directories plus
    ``weights`` (a list, or a function of tokens drawn for schedules that ramp a mixture)."""
    directories = [source[0] if isinstance(source, tuple) else source for source in sources]
    if weights is None:
        weights = [source[1] if isinstance(source, tuple) else 1.0 for source in sources]
    blocks = [ShardedBlocks(Path(d), block_size, seed=seed, window=window) for d in directories]
    dataset = MixedBlockDataset(blocks, weights, micro_batch_size, seed, rank, world_size, epochs)
    return BlockLoader(dataset, num_workers)
