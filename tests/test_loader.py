import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gpt.data.loader import ShardedBlocks, create_loader
from lit_gpt.data.shards import write_shard

BLOCK_SIZE = 7  # blocks of 8 tokens


def make_dataset(directory: Path, blocks_per_shard: list[int], first_token: int = 0, tail: int = 0) -> list[tuple]:
    """Shards whose blocks are all different: block b holds first_token + 8 b, ..., first_token + 8 b + 7.

    Returns every block as a tuple of tokens."""
    directory.mkdir(parents=True)
    token = first_token
    for index, count in enumerate(blocks_per_shard):
        size = count * (BLOCK_SIZE + 1) + (tail if index == len(blocks_per_shard) - 1 else 0)
        write_shard(directory / f"train_test_0_{index:010d}.bin", np.arange(token, token + size, dtype=np.int32))
        token += size
    tokens = np.concatenate([np.fromfile(p, dtype=np.int32, offset=24) for p in sorted(directory.glob("*.bin"))])
    blocks = []
    start = first_token
    for count in blocks_per_shard:
        for _ in range(count):
            blocks.append(tuple(range(start, start + BLOCK_SIZE + 1)))
            start += BLOCK_SIZE + 1
    assert len(tokens) >= len(blocks) * (BLOCK_SIZE + 1)
    return blocks


def read_epoch(sources, world_size: int, num_workers: int, micro_batch_size: int = 3, **kwargs) -> list[tuple]:
    blocks = []
    for rank in range(world_size):
        loader = create_loader(
            sources,
            BLOCK_SIZE,
            micro_batch_size,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            epochs=1,
            **kwargs,
        )
        for batch in loader:
            assert batch.dtype == torch.int64 and batch.shape[1] == BLOCK_SIZE + 1
            blocks.extend(tuple(row) for row in batch.tolist())
    return blocks


@pytest.mark.filterwarnings("ignore:.*do not fill a block")
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_block_is_read_exactly_once_per_epoch(tmp_path, world_size, num_workers):
    # 7 shards of uneven sizes: divisible neither by the world size nor by the window of 3.
    blocks = make_dataset(tmp_path / "data", [5, 9, 3, 12, 1, 7, 4], tail=3)
    read = read_epoch([tmp_path / "data"], world_size, num_workers, window=3)
    assert sorted(read) == sorted(blocks)  # as multisets: none twice, none missing


def test_pending_tokens_of_an_unfinished_preparation_are_not_read(tmp_path):
    blocks = make_dataset(tmp_path / "data", [4])
    write_shard(tmp_path / "data" / ".train_test_0.pending.3.bin", np.arange(10**6, 10**6 + 80, dtype=np.int32))
    assert sorted(read_epoch([tmp_path / "data"], world_size=1, num_workers=0)) == sorted(blocks)


def test_a_validation_set_smaller_than_world_size_times_window_works(tmp_path):
    blocks = make_dataset(tmp_path / "val", [2, 1])
    assert sorted(read_epoch([tmp_path / "val"], world_size=4, num_workers=2, window=8)) == sorted(blocks)


def test_blocks_are_shuffled_seeded_and_reshuffled_each_epoch(tmp_path):
    blocks = make_dataset(tmp_path / "data", [20, 20, 20, 20])
    source = ShardedBlocks(tmp_path / "data", BLOCK_SIZE, seed=1, window=2)
    epoch0 = [source.locate(p) for p in range(80)]
    epoch1 = [source.locate(p) for p in range(80, 160)]
    in_order = [(s, b) for s in range(4) for b in range(20)]
    assert sorted(epoch0) == sorted(epoch1) == in_order
    assert epoch0 != in_order and epoch1 != epoch0
    assert [ShardedBlocks(tmp_path / "data", BLOCK_SIZE, seed=1, window=2).locate(p) for p in range(80)] == epoch0
    assert [ShardedBlocks(tmp_path / "data", BLOCK_SIZE, seed=2, window=2).locate(p) for p in range(80)] != epoch0
    # Shuffling is inside windows of 2 shards: the first 40 positions come from two shards only.
    assert len({shard for shard, _ in epoch0[:40]}) == 2
    assert len(blocks) == 80


def source_of(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] >= 1_000_000).long().tolist()  # the second dataset's tokens start at 1,000,000


@pytest.fixture
def two_sources(tmp_path):
    make_dataset(tmp_path / "a", [50] * 6)
    make_dataset(tmp_path / "b", [40] * 5, first_token=1_000_000)
    return tmp_path / "a", tmp_path / "b"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_from_a_state_gives_the_same_next_batches(two_sources, num_workers):
    a, b = two_sources

    def ramp(tokens: int) -> list[float]:
        return [max(0.0, 1 - tokens / 5000), min(1.0, 0.2 + tokens / 5000)]

    def make():
        return create_loader([a, b], BLOCK_SIZE, 4, weights=ramp, num_workers=num_workers, seed=3, rank=1, world_size=2)

    stop = random.Random(7).randrange(50, 300)
    loader = make()
    iterator = iter(loader)
    for _ in range(stop):
        next(iterator)
    state = loader.state_dict()
    uninterrupted = [next(iterator) for _ in range(100)]

    restored = make()
    restored.load_state_dict(state)
    resumed = [batch for _, batch in zip(range(100), restored, strict=False)]
    assert len(resumed) == 100
    for expected, actual in zip(uninterrupted, resumed, strict=True):
        assert torch.equal(expected, actual)


def test_mixture_follows_the_weights(two_sources):
    loader = create_loader([(two_sources[0], 0.693584), (two_sources[1], 0.306416)], BLOCK_SIZE, 10)
    counts = Counter()
    for _, batch in zip(range(1000), loader, strict=False):
        counts.update(source_of(batch))
    assert sum(counts.values()) == 10_000
    assert abs(counts[0] / 10_000 - 0.693584) < 0.01


def test_a_ramp_moves_the_mixture_with_tokens(two_sources):
    ramp_tokens = 10_000 * BLOCK_SIZE  # the whole ramp spans the first 10,000 blocks
    ramp = lambda tokens: [1 - min(tokens / ramp_tokens, 1.0), min(tokens / ramp_tokens, 1.0)]  # noqa: E731
    loader = create_loader(list(two_sources), BLOCK_SIZE, 10, weights=ramp)
    drawn = [s for _, batch in zip(range(1500), loader, strict=False) for s in source_of(batch)]
    for start, expected in [(0, 0.05), (4500, 0.5), (9000, 0.95), (11000, 1.0)]:
        window = drawn[start : start + 1000]
        assert abs(sum(window) / 1000 - expected) < 0.04, (start, sum(window))


def test_clear_errors_for_unusable_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Dataset directory {tmp_path / 'nope'} does not exist"):
        ShardedBlocks(tmp_path / "nope", BLOCK_SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .bin shards"):
        ShardedBlocks(tmp_path / "empty", BLOCK_SIZE)
    (tmp_path / "small").mkdir()
    write_shard(tmp_path / "small" / "x.bin", np.arange(5, dtype=np.uint16))
    with pytest.raises(ValueError, match="No shard in .* holds a whole block of 8 tokens"):
        ShardedBlocks(tmp_path / "small", BLOCK_SIZE)


def test_shards_of_a_non_integer_dtype_are_refused(tmp_path):
    (tmp_path / "floats").mkdir()
    write_shard(tmp_path / "floats" / "x.bin", np.arange(64, dtype=np.float32))
    with pytest.raises(ValueError, match="x.bin: tokens of dtype float32"):
        ShardedBlocks(tmp_path / "floats", BLOCK_SIZE)


def test_unreadable_tail_tokens_are_reported(tmp_path):
    make_dataset(tmp_path / "data", [3], tail=5)
    with pytest.warns(UserWarning, match="5 tokens at shard ends do not fill a block of 8 tokens"):
        ShardedBlocks(tmp_path / "data", BLOCK_SIZE)


def test_bad_weights_are_refused(two_sources):
    with pytest.raises(ValueError, match="must be 2 non-negative numbers with a positive sum, got \\[0.0, 0.0\\]"):
        create_loader([(two_sources[0], 0), (two_sources[1], 0)], BLOCK_SIZE, 2)
