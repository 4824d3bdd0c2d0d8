"""The training loader: blocks of ``block_size + 1`` tokens from packed shards, mixed, sharded, resumable.

One order for every topology. The data of a run is one global stream of positions 0, 1, 2, ...
Position p reads from the source drawn with the mixture weights at ``p x block_size`` tokens, a pure
function of ``(seed, p)`` (:class:`MixtureDraws`); a source's k-th drawn position reads block k of that
source's order (:class:`ShardedBlocks`: each epoch one seeded permutation of all its blocks, so every
block is read exactly once per epoch). Optimizer step s takes the next ``global_batch_size(s)``
positions; rank r of W takes the r-th W-th of them, cut into micro-batches, and DataLoader workers
take turns with a rank's micro-batches. The blocks of every step therefore depend on the data, the
seed and the batch schedule only, not on world size, micro-batch size or worker count.

Resuming. The loader's state is four global counters -- step, position, blocks taken per source, and
micro-batches of the current step already consumed (0 at every step boundary) -- the same on every
rank, so a checkpoint resumes in O(1) on any number of ranks.
"""

from __future__ import annotations

import bisect
import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lit_gpt.data.index import (
    Fingerprint,
    ShardTable,
    TokenizerRecord,
    header_table,
    index_files_listing,
    is_index_file,
    read_directory_index,
    shard_names,
)
from lit_gpt.data.integrity import ShardChecks
from lit_gpt.errors import InvalidInput, MissingInput, UserError

# Mixture weights: one weight per source, or a function from an array of token counts (n,) to the
# weights at each of them (n, sources), for stages whose mixture ramps in.
Weights = Sequence[float] | Callable[[np.ndarray], np.ndarray]
BatchSchedule = int | Callable[[int], int]
DRAWS_PER_CHUNK = 4096
# Tokens at shard ends that fill no block are not read. Each job's last, shorter shard leaves some (a tiny
# share, which training's start-up line counts); from this share on it is worth a warning at every start
# (a chunk size that blocks do not divide, another block size than the shards were cut for).
UNUSED_WARNING = 0.01


@dataclass
class SourceListing:
    """What start-up learns about a data source without opening its shards: its shards' table (in name
    order) and the tokenizer that each index file records. Read once per job and broadcast (``pretrain``),
    so that 64 ranks do not list and parse one directory 64 times."""

    table: ShardTable
    tokenizers: dict[str, TokenizerRecord]


def read_listing(directory: Path, prefix: str = "") -> SourceListing:
    """The source's shards in name order, from the index where it has them, else from their headers."""
    if not directory.is_dir():
        raise MissingInput(f"Dataset directory {directory} does not exist")
    listing = os.listdir(directory)
    shards = shard_names(listing, prefix)
    if not shards:
        named = f" {prefix}*.bin" if prefix else " .bin"
        raise MissingInput(f"Dataset directory {directory} holds no{named} shards")
    indexed, tokenizers = read_directory_index(
        directory, [n for n in listing if n.endswith(".json") and is_index_file(n)], prefix
    )
    if indexed.names == shards:  # the usual case: one index, in name order, of every shard
        return SourceListing(indexed, tokenizers)
    stale = sorted(set(indexed.names).difference(shards))
    if stale:
        raise InvalidInput(
            f"{directory}: {len(stale):,} shard(s) listed in {', '.join(index_files_listing(directory, stale[0]))} "
            f"are not there (e.g. {stale[0]}). Restore them, or if they were removed on purpose, re-index "
            f"the directory (this replaces its index files): python scripts/index_shards.py --directory {directory}"
        )
    rows = {name: i for i, name in enumerate(indexed.names)}
    unindexed = [name for name in shards if name not in rows]
    if unindexed:
        warnings.warn(
            f"{directory}: {len(unindexed):,} of {len(shards):,} shards are not in an index, so their "
            "headers are read at every start; `python scripts/index_shards.py --directory "
            f"{directory}` makes the start instant",
            stacklevel=3,
        )
        rows.update({name: len(indexed) + i for i, name in enumerate(unindexed)})
        indexed = ShardTable.concatenate([indexed, header_table(directory, unindexed)])
    return SourceListing(indexed.take([rows[name] for name in shards]), tokenizers)


class ShardedBlocks:
    """The blocks of one data source -- a directory's shards, or those whose names start with ``prefix``
    -- and their shuffled order in each epoch.

    Start-up reads one directory listing and the directory's index files (:func:`read_listing`, or the
    ``listing`` read by another rank); a shard is opened when a block is first read from it, and its
    content checked then (lit_gpt/data/integrity.py): a bad copy, a replaced file or bit rot is refused,
    naming the shard. Shards missing from the index are read by
    header (with a warning). With ``vocab_size``, a shard whose indexed largest id is too large is refused
    at start-up, and one without an indexed checksum has its largest id checked when it is opened.
    """

    def __init__(
        self,
        directory: Path,
        block_size: int,
        seed: int = 42,
        window: int = 8,
        prefix: str = "",
        vocab_size: int | None = None,
        listing: SourceListing | None = None,
    ) -> None:
        self.directory, self.prefix, self.vocab_size = Path(directory), prefix, vocab_size
        self.block_tokens, self.seed, self.window = block_size + 1, seed, window
        listing = listing or read_listing(self.directory, prefix)
        table, self.tokenizers = listing.table, listing.tokenizers
        self.names, self.counts, self.max_ids = table.names, table.tokens, table.max_ids
        self.checks = ShardChecks(self.directory, self.names, table.checksums, vocab_size)
        self.dtype = np.dtype(table.dtypes[0])
        if len(set(table.dtypes)) > 1 or self.dtype.kind not in "iu":
            odd = next((i for i, dtype in enumerate(table.dtypes) if dtype != table.dtypes[0]), 0)
            raise InvalidInput(
                f"{self.directory / table.names[odd]}: tokens of dtype {table.dtypes[odd]}; a dataset needs one "
                f"integer dtype ({table.dtypes[0]})"
            )
        if vocab_size is not None:
            outside = np.flatnonzero(self.max_ids >= vocab_size)
            if outside.size:
                first = outside[0]
                raise InvalidInput(
                    f"{self.directory / self.names[first]}: token id {self.max_ids[first]} is outside the model's "
                    f"vocabulary of {vocab_size} ({outside.size} shard(s) of {self.directory} are); were these "
                    "shards made with another tokenizer?"
                )
        self.blocks_per_shard = self.counts // self.block_tokens
        self.num_blocks = int(self.blocks_per_shard.sum())
        if self.num_blocks == 0:
            raise InvalidInput(f"No shard in {self.directory} holds a whole block of {self.block_tokens} tokens")
        self.unused_tokens = int((self.counts % self.block_tokens).sum())
        unused = self.unused_tokens
        if unused >= UNUSED_WARNING * self.counts.sum():
            warnings.warn(
                f"{self.directory}: {unused:,} tokens at shard ends do not fill a block of {self.block_tokens} "
                f"tokens and are not read ({unused / self.counts.sum():.4%} of the data)",
                stacklevel=2,
            )
        self._make_caches()

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(list(self.names), self.counts.tolist())

    def _make_caches(self) -> None:
        """Open shards and recent permutations, kept per object (and rebuilt in a spawned worker)."""
        self._open = functools.lru_cache(maxsize=2 * self.window)(self._open_shard)
        self._epoch_layout = functools.lru_cache(maxsize=2)(self._compute_epoch_layout)
        self._window = functools.lru_cache(maxsize=4)(self._compute_window)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_open", "_epoch_layout", "_window")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_caches()

    def _open_shard(self, shard: int) -> np.ndarray:
        path = self.directory / self.names[shard]
        tokens = self.checks.open(shard)
        if len(tokens) != self.counts[shard] or tokens.dtype != self.dtype:
            raise InvalidInput(
                f"{path}: {len(tokens)} tokens of {tokens.dtype}, but the index says {self.counts[shard]} of "
                f"{self.dtype}; the shard changed after it was indexed (python scripts/index_shards.py "
                f"--directory {self.directory})"
            )
        self.checks.check(shard, tokens)
        return tokens

    def _compute_epoch_layout(self, epoch: int) -> tuple[np.ndarray, list[int]]:
        """Shard order and cumulative block counts of the windows, for one epoch."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.names))
        window_blocks = np.add.reduceat(self.blocks_per_shard[order], np.arange(0, len(order), self.window))
        return order, [0, *np.cumsum(window_blocks).tolist()]

    def _compute_window(self, epoch: int, window: int) -> tuple[list[int], list[int], list[int]]:
        """The shards of one window, their cumulative block counts, and the window's block permutation.
        The content checks of its shards and of the next window's start in the background."""
        shards = self._window_shards(epoch, window)
        cumulative = [0, *np.cumsum(self.blocks_per_shard[shards]).tolist()]
        permutation = np.random.default_rng([self.seed, epoch, window]).permutation(cumulative[-1])
        following = (epoch, window + 1) if (window + 1) * self.window < len(self.names) else (epoch + 1, 0)
        self.checks.ahead(shards + self._window_shards(*following))
        return shards, cumulative, permutation.tolist()

    def _window_shards(self, epoch: int, window: int) -> list[int]:
        order, _ = self._epoch_layout(epoch)
        return order[window * self.window : (window + 1) * self.window].tolist()

    def locate(self, k: int) -> tuple[int, int]:
        """(shard index, block index inside the shard) of the source's k-th block, over endless epochs."""
        epoch, offset = divmod(k, self.num_blocks)
        _, starts = self._epoch_layout(epoch)
        window = bisect.bisect_right(starts, offset) - 1
        shards, cumulative, permutation = self._window(epoch, window)
        index = permutation[offset - starts[window]]
        slot = bisect.bisect_right(cumulative, index) - 1
        return shards[slot], index - cumulative[slot]

    def read(self, k: int, out: np.ndarray) -> None:
        shard, block = self.locate(k)
        start = block * self.block_tokens
        out[:] = self._open(shard)[start : start + self.block_tokens]


class MixtureDraws:
    """The source that each position of the global stream reads: a pure function of ``(seed, position)``.

    Positions are drawn in chunks of 4,096 (one seeded generator per chunk), so any position is reached
    without drawing the ones before it, and counting the draws of a range is vectorised.
    """

    def __init__(self, weights: Weights, num_sources: int, block_size: int, seed: int) -> None:
        self.weights, self.num_sources, self.block_size, self.seed = weights, num_sources, block_size, seed
        self._chunk = functools.lru_cache(maxsize=4)(self._compute_chunk)
        self.weights_at(np.zeros(1, dtype=np.int64))  # refuse bad weights at once

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_chunk"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._chunk = functools.lru_cache(maxsize=4)(self._compute_chunk)

    def weights_at(self, tokens: np.ndarray) -> np.ndarray:
        """The mixture weights after each of ``tokens`` training tokens, one row per entry, checked."""
        if callable(self.weights):
            weights = np.asarray(self.weights(tokens), dtype=np.float64)
        else:
            weights = np.broadcast_to(np.asarray(self.weights, dtype=np.float64), (len(tokens), len(self.weights)))
        if weights.shape != (len(tokens), self.num_sources):
            raise InvalidInput(f"Mixture weights must have one entry per source ({self.num_sources}), got {weights[0]}")
        bad = (weights < 0).any(axis=1) | (weights.sum(axis=1) <= 0)
        if bad.any():
            first = int(np.argmax(bad))
            raise InvalidInput(
                f"Mixture weights at {int(tokens[first]):,} tokens must be {self.num_sources} non-negative numbers "
                f"with a positive sum, got {weights[first].tolist()}"
            )
        return weights

    def _compute_chunk(self, chunk: int) -> np.ndarray:
        if self.num_sources == 1:
            return np.zeros(DRAWS_PER_CHUNK, dtype=np.int64)
        positions = chunk * DRAWS_PER_CHUNK + np.arange(DRAWS_PER_CHUNK, dtype=np.int64)
        weights = self.weights_at(positions * self.block_size)
        cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
        uniforms = np.random.default_rng([self.seed, chunk]).random(DRAWS_PER_CHUNK)
        drawn = (cumulative <= uniforms[:, None]).sum(axis=1)
        return np.minimum(drawn, self.num_sources - 1)

    def sources(self, start: int, stop: int) -> np.ndarray:
        """The source index of each position in ``[start, stop)``."""
        pieces = []
        for chunk in range(start // DRAWS_PER_CHUNK, (stop - 1) // DRAWS_PER_CHUNK + 1 if stop > start else 0):
            first = chunk * DRAWS_PER_CHUNK
            pieces.append(self._chunk(chunk)[max(start - first, 0) : stop - first])
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def counts(self, start: int, stop: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """How many positions of ``[start, stop)`` each source drew; ``progress`` hears of each chunk."""
        counts = np.zeros(self.num_sources, dtype=np.int64)
        if self.num_sources == 1:
            counts[0] = max(stop - start, 0)
            return counts
        for begin in range(start, stop, DRAWS_PER_CHUNK):
            end = min((begin // DRAWS_PER_CHUNK + 1) * DRAWS_PER_CHUNK, stop)
            counts += np.bincount(self.sources(begin, end), minlength=self.num_sources)
            if progress is not None:
                progress(end - begin)
        return counts


SPLIT = {"world_size", "micro_batch_size"}  # how a step's positions were split, beside the counters


def initial_state(num_sources: int) -> dict:
    return {"step": 0, "position": 0, "taken": [0] * num_sources, "micro_batch": 0}


class MixedBlockDataset(IterableDataset):
    """One rank's micro-batches (micro_batch_size, block_size + 1) of int64, each with the loader state
    after it.

    ``global_batch_size`` is the sequences per optimizer step, a number or a function of the step (stages);
    default: one micro-batch per rank. ``epochs`` ends the stream at the first position whose source has
    been read that many times (for evaluation), and ``positions`` after that many positions (a fixed
    validation set); the last micro-batches may then be shorter or missing.
    """

    def __init__(
        self,
        sources: list[ShardedBlocks],
        weights: Weights,
        micro_batch_size: int,
        global_batch_size: BatchSchedule | None = None,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
        positions: int | None = None,
    ) -> None:
        self.sources, self.micro_batch_size = sources, micro_batch_size
        self.positions = positions
        self.batch_schedule = global_batch_size or world_size * micro_batch_size
        self.rank, self.world_size, self.epochs = rank, world_size, epochs
        self.block_tokens = sources[0].block_tokens
        if any(source.block_tokens != self.block_tokens for source in sources):
            raise InvalidInput("All sources of a mixture must use the same block size")
        self.draws = MixtureDraws(weights, len(sources), self.block_tokens - 1, seed)
        self.state = initial_state(len(sources))
        self.global_batch_size(0)

    def global_batch_size(self, step: int) -> int:
        size = self.batch_schedule(step) if callable(self.batch_schedule) else self.batch_schedule
        if size <= 0 or size % (self.world_size * self.micro_batch_size):
            raise InvalidInput(
                f"Step {step}: global batch size {size} is not a positive multiple of world size {self.world_size} "
                f"x micro-batch size {self.micro_batch_size}"
            )
        return size

    def step_positions(self, step: int, position: int, taken: Sequence[int]) -> tuple[np.ndarray, np.ndarray, int]:
        """For each position of ``step`` (starting at ``position``, after ``taken`` blocks per source): its
        source, which block of that source's order it reads, and where the stream ends (``epochs``)."""
        drawn = self.draws.sources(position, position + self.global_batch_size(step))
        numbers = np.empty(len(drawn), dtype=np.int64)
        for source in range(len(self.sources)):
            where = drawn == source
            numbers[where] = taken[source] + np.arange(int(where.sum()))
        end = len(drawn)
        if self.epochs is not None:
            limits = np.array([self.epochs * source.num_blocks for source in self.sources])
            exhausted = np.flatnonzero(numbers >= limits[drawn])
            end = int(exhausted[0]) if exhausted.size else end
        if self.positions is not None:
            end = min(end, max(self.positions - position, 0))
        return drawn, numbers, end

    def state_at(self, step: int, position: int, progress: Callable[[int], None] | None = None) -> dict:
        """The state at the start of ``step``, whose first position is ``position``: O(position) draws to
        count (for looking at a step without a checkpoint; resuming uses the saved counters)."""
        taken = self.draws.counts(0, position, progress)
        return {"step": step, "position": position, "taken": taken.tolist(), "micro_batch": 0}

    def micro_batch_offsets(self, size: int, micro: int) -> range:
        """The offsets in a step of ``size`` positions that this rank reads in its micro-batch ``micro``."""
        first = self.rank * (size // self.world_size) + micro * self.micro_batch_size
        return range(first, first + self.micro_batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | UserError, dict]]:
        info = get_worker_info()
        if info is None:
            yield from self.micro_batches(1, 0)
            return
        try:
            yield from self.micro_batches(info.num_workers, info.id)
        except UserError as error:  # raised in a worker, the DataLoader would wrap it in a traceback:
            yield error, {}  # handed to the main process instead, which raises it as it is

    def micro_batches(self, workers: int, worker: int) -> Iterator[tuple[torch.Tensor, dict]]:
        """This rank's micro-batches from the loader's state on, those of DataLoader worker ``worker``."""
        step, position, skip = self.state["step"], self.state["position"], self.state["micro_batch"]
        taken = np.array(self.state["taken"], dtype=np.int64)
        emitted = 0
        while True:
            drawn, numbers, end = self.step_positions(step, position, taken)
            size = len(drawn)
            micro_steps = size // self.world_size // self.micro_batch_size
            after = taken + np.bincount(drawn, minlength=len(self.sources))
            for micro in range(skip, micro_steps):
                if emitted % workers == worker:
                    rows = [offset for offset in self.micro_batch_offsets(size, micro) if offset < end]
                    if rows:
                        batch = np.empty((len(rows), self.block_tokens), dtype=np.int64)
                        for row, offset in enumerate(rows):
                            self.sources[drawn[offset]].read(int(numbers[offset]), batch[row])
                        if micro == micro_steps - 1:  # the step is done: the state is the next step's start
                            state = {"step": step + 1, "position": position + size, "taken": after.tolist()}
                        else:
                            state = {"step": step, "position": position, "taken": taken.tolist()}
                        yield torch.from_numpy(batch), state | {"micro_batch": (micro + 1) % micro_steps}
                emitted += 1
            if end < size:
                return
            step, position, taken, skip = step + 1, position + size, after, 0


class BlockLoader:
    """Iterates one rank's micro-batches through a torch DataLoader and remembers the exact position.

    ``state_dict()`` is the position after the last micro-batch handed out (not the ones that workers
    have prefetched); with it a loader on any number of ranks continues with the blocks the old run
    would have read next.
    """

    def __init__(self, dataset: MixedBlockDataset, num_workers: int = 0) -> None:
        self.dataset, self.num_workers = dataset, num_workers

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.num_workers == 0:  # skip the DataLoader's per-batch conversions
            loader = iter(self.dataset)
        else:
            loader = DataLoader(
                self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available()
            )
        for batch, state in loader:
            if isinstance(batch, UserError):
                raise batch
            self.dataset.state = state
            yield batch

    def state_dict(self) -> dict:
        """The four global counters, and the split they were taken with (which matters mid-step only)."""
        split = {"world_size": self.dataset.world_size, "micro_batch_size": self.dataset.micro_batch_size}
        return {**self.dataset.state, "taken": list(self.dataset.state["taken"])} | split

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: on any split at a step boundary; in the middle of a step only on the
        split it was taken with, since the micro-batches done are then a different set of positions."""
        counters = initial_state(len(self.dataset.sources))
        if set(state) != set(counters) | SPLIT or len(state["taken"]) != len(counters["taken"]):
            raise InvalidInput(
                f"Not a loader state for {len(counters['taken'])} data source(s): {state}; a checkpoint keeps its "
                "sources (add or remove one with a new run started from its weights)"
            )
        split = (self.dataset.world_size, self.dataset.micro_batch_size)
        if state["micro_batch"] and (state["world_size"], state["micro_batch_size"]) != split:
            raise InvalidInput(
                f"The loader state was taken in the middle of step {state['step']} ({state['micro_batch']} "
                f"micro-batches done) on {state['world_size']} rank(s) x micro-batch {state['micro_batch_size']}; "
                f"it continues on that split only, not on {split[0]} x {split[1]}; resume from a step boundary"
            )
        self.dataset.state = {key: state[key] for key in counters} | {"taken": [int(t) for t in state["taken"]]}

    def reset(self) -> None:
        """Back to the first block (for a validation pass that reads the same blocks every time)."""
        self.dataset.state = initial_state(len(self.dataset.sources))


def create_loader(
    sources: Sequence[Path | tuple[Path, float] | ShardedBlocks],
    block_size: int,
    micro_batch_size: int,
    global_batch_size: BatchSchedule | None = None,
    weights: Weights | None = None,
    seed: int = 42,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    window: int = 8,
    epochs: int | None = None,
    vocab_size: int | None = None,
    positions: int | None = None,
) -> BlockLoader:
    """A loader over data sources: directories, (directory, weight) pairs, or ShardedBlocks (for a name
    prefix); ``weights`` overrides the pairs' weights (a list, or a function for ramped mixtures)."""
    if weights is None:
        weights = [source[1] if isinstance(source, tuple) else 1.0 for source in sources]
    blocks = [
        source
        if isinstance(source, ShardedBlocks)
        else ShardedBlocks(
            Path(source[0] if isinstance(source, tuple) else source),
            block_size,
            seed=seed,
            window=window,
            vocab_size=vocab_size,
        )
        for source in sources
    ]
    dataset = MixedBlockDataset(
        blocks, weights, micro_batch_size, global_batch_size, seed, rank, world_size, epochs, positions
    )
    return BlockLoader(dataset, num_workers)
