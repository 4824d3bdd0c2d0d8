import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gpt.data import integrity
from lit_gpt.data.index import Fingerprint, index_directory
from lit_gpt.data.loader import ShardedBlocks, create_loader
from lit_gpt.data.run_loaders import check_tokenizer
from lit_gpt.data.shards import write_shard
from lit_gpt.errors import InvalidInput

BLOCK_SIZE = 7  # blocks of 8 tokens
SECOND_SOURCE = 1_000_000  # the second dataset's tokens start here


def make_dataset(
    directory: Path, blocks_per_shard: list[int], first_token: int = 0, tail: int = 0, index: bool = True
) -> list[tuple]:
    """Shards whose blocks are all different: block b holds first_token + 8 b, ..., first_token + 8 b + 7,
    with an index unless ``index`` is false. Returns every block as a tuple of tokens."""
    directory.mkdir(parents=True)
    token, blocks = first_token, []
    for number, count in enumerate(blocks_per_shard):
        size = count * (BLOCK_SIZE + 1) + (tail if number == len(blocks_per_shard) - 1 else 0)
        write_shard(directory / f"train_test_0_{number:010d}.bin", np.arange(token, token + size, dtype=np.int32))
        blocks += [tuple(range(start, start + BLOCK_SIZE + 1)) for start in range(token, token + count * 8, 8)]
        token += size
    if index:
        index_directory(directory)
    return blocks


def read_steps(sources, world_size: int, micro_batch_size: int, num_workers: int, steps: int, state=None, **kwargs):
    """The blocks of each of ``steps`` optimizer steps as sorted lists (multisets), read rank by rank;
    and the loader state after them (the same on every rank)."""
    per_step: list[list[tuple]] = [[] for _ in range(steps)]
    states = []
    for rank in range(world_size):
        loader = create_loader(
            sources, BLOCK_SIZE, micro_batch_size, rank=rank, world_size=world_size, num_workers=num_workers, **kwargs
        )
        if state is not None:
            loader.load_state_dict(state)
        accumulation = kwargs["global_batch_size"] // (world_size * micro_batch_size)
        batches = iter(loader)
        for step in range(steps):
            for _ in range(accumulation):
                batch = next(batches)
                assert batch.dtype == torch.int64 and batch.shape == (micro_batch_size, BLOCK_SIZE + 1)
                per_step[step] += [tuple(row) for row in batch.tolist()]
        states.append(loader.state_dict())
    assert all(s == states[0] for s in states)
    return [sorted(blocks) for blocks in per_step], states[0]


def counters(state: dict) -> dict:
    """A loader state without the split it was taken with: what every topology agrees on."""
    return {key: value for key, value in state.items() if key not in ("world_size", "micro_batch_size")}


def read_epoch(sources, world_size: int, num_workers: int, micro_batch_size: int = 3, **kwargs) -> list[tuple]:
    blocks = []
    for rank in range(world_size):
        loader = create_loader(
            sources, BLOCK_SIZE, micro_batch_size, rank=rank, world_size=world_size, num_workers=num_workers, epochs=1
        )
        blocks += [tuple(row) for batch in loader for row in batch.tolist()]
    return blocks


@pytest.fixture
def two_sources(tmp_path):
    make_dataset(tmp_path / "a", [50] * 6)
    make_dataset(tmp_path / "b", [40] * 5, first_token=SECOND_SOURCE)
    return tmp_path / "a", tmp_path / "b"


def ramp(tokens: np.ndarray) -> np.ndarray:
    """From all of the first source to 0.2 / 0.8 over the first 50 steps of 24 blocks."""
    fraction = np.minimum(tokens / (50 * 24 * BLOCK_SIZE), 1.0)
    return np.stack([1 - 0.8 * fraction, 0.8 * fraction], axis=1)


TOPOLOGIES = [(1, 8, 0), (2, 4, 0), (2, 4, 2), (4, 2, 1), (3, 4, 0)]  # (world size, micro-batch, workers)


@pytest.mark.parametrize("mixture", ["one source", "0.7/0.3", "ramped"])
def test_every_step_reads_the_same_blocks_on_any_topology(two_sources, mixture):
    sources = {"one source": [two_sources[0]], "0.7/0.3": list(two_sources), "ramped": list(two_sources)}[mixture]
    weights = {"one source": [1.0], "0.7/0.3": [0.7, 0.3], "ramped": ramp}[mixture]
    results = [
        read_steps(sources, world, micro, workers, steps=30, global_batch_size=24, weights=weights, seed=5)
        for world, micro, workers in TOPOLOGIES
    ]
    reference, reference_state = results[0]
    assert len({block[0] >= SECOND_SOURCE for step in reference for block in step}) == (
        1 if mixture == "one source" else 2
    )
    for (world, micro, workers), (steps, state) in zip(TOPOLOGIES, results, strict=True):
        assert steps == reference, (world, micro, workers)
        assert counters(state) == counters(reference_state)  # the split they were taken with differs


def test_a_state_resumes_on_another_topology(two_sources):
    kwargs = dict(global_batch_size=24, weights=ramp, seed=5)
    uninterrupted, _ = read_steps(list(two_sources), 1, 8, 0, steps=12, **kwargs)
    first, state = read_steps(list(two_sources), 2, 4, 0, steps=5, **kwargs)
    assert state["step"] == 5 and state["position"] == 5 * 24 and state["micro_batch"] == 0
    for world, micro, workers in [(1, 8, 0), (4, 2, 1), (3, 4, 2)]:
        rest, _ = read_steps(list(two_sources), world, micro, workers, steps=7, state=state, **kwargs)
        assert first + rest == uninterrupted


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_state_taken_between_micro_batches_resumes_exactly(two_sources, num_workers):
    def make():
        return create_loader(
            list(two_sources), BLOCK_SIZE, 4, 24, weights=ramp, num_workers=num_workers, seed=3, rank=1, world_size=2
        )

    loader = make()
    iterator = iter(loader)
    for _ in range(3 * 7 + 2):  # three micro-batches per step: stop two into the eighth step
        next(iterator)
    state = loader.state_dict()
    assert state["step"] == 7 and state["micro_batch"] == 2
    uninterrupted = [next(iterator) for _ in range(20)]
    restored = make()
    restored.load_state_dict(state)
    resumed = [batch for _, batch in zip(range(20), restored, strict=False)]
    assert len(resumed) == 20 and all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed, strict=True))


@pytest.mark.filterwarnings("ignore:.*do not fill a block")
@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 cores, on purpose
def test_every_block_is_read_exactly_once_per_epoch(tmp_path, world_size, num_workers):
    # 7 shards of uneven sizes and a short last shard: divisible neither by the world size nor by the window.
    blocks = make_dataset(tmp_path / "data", [5, 9, 3, 12, 1, 7, 4], tail=3)
    assert sorted(read_epoch([tmp_path / "data"], world_size, num_workers)) == sorted(blocks)  # none twice or lost


def test_each_source_of_a_mixture_is_read_once_per_epoch(tmp_path):
    a = make_dataset(tmp_path / "a", [5, 9, 3], tail=3)
    b = make_dataset(tmp_path / "b", [4, 2], first_token=SECOND_SOURCE)
    with pytest.warns(UserWarning, match="3 tokens at shard ends do not fill a block of 8 tokens"):
        steps, _ = read_steps(
            [tmp_path / "a", tmp_path / "b"], 2, 3, 1, steps=20, global_batch_size=12, weights=[0.6, 0.4]
        )
    read = Counter(block for step in steps for block in step)
    for blocks in (a, b):
        drawn = sum(read[block] for block in blocks)
        epochs, rest = divmod(drawn, len(blocks))
        assert epochs >= 2  # several epochs of each source were read
        assert sorted(read[block] for block in blocks) == [epochs] * (len(blocks) - rest) + [epochs + 1] * rest


def test_pending_tokens_of_an_unfinished_preparation_are_not_read(tmp_path):
    blocks = make_dataset(tmp_path / "data", [4])
    write_shard(tmp_path / "data" / ".train_test_0.pending.3.bin", np.arange(10**6, 10**6 + 80, dtype=np.int32))
    assert sorted(read_epoch([tmp_path / "data"], world_size=1, num_workers=0)) == sorted(blocks)


def test_a_validation_set_smaller_than_the_world_size_works(tmp_path):
    blocks = make_dataset(tmp_path / "val", [2, 1])
    assert sorted(read_epoch([tmp_path / "val"], world_size=4, num_workers=2)) == sorted(blocks)


def test_blocks_are_shuffled_seeded_and_reshuffled_each_epoch(tmp_path):
    make_dataset(tmp_path / "data", [20, 20, 20, 20])
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


def source_of(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] >= SECOND_SOURCE).long().tolist()


def test_mixture_follows_the_weights(two_sources):
    loader = create_loader([(two_sources[0], 0.693584), (two_sources[1], 0.306416)], BLOCK_SIZE, 10)
    counts = Counter(s for _, batch in zip(range(1000), loader, strict=False) for s in source_of(batch))
    assert sum(counts.values()) == 10_000
    assert abs(counts[0] / 10_000 - 0.693584) < 0.01


def test_a_ramp_moves_the_mixture_with_tokens(two_sources):
    ramp_tokens = 10_000 * BLOCK_SIZE  # the whole ramp spans the first 10,000 blocks

    def weights(tokens: np.ndarray) -> np.ndarray:
        fraction = np.minimum(tokens / ramp_tokens, 1.0)
        return np.stack([1 - fraction, fraction], axis=1)

    loader = create_loader(list(two_sources), BLOCK_SIZE, 10, weights=weights)
    drawn = [s for _, batch in zip(range(1500), loader, strict=False) for s in source_of(batch)]
    for start, expected in [(0, 0.05), (4500, 0.5), (9000, 0.95), (11000, 1.0)]:
        window = drawn[start : start + 1000]
        assert abs(sum(window) / 1000 - expected) < 0.04, (start, sum(window))


def test_state_at_counts_the_draws_of_every_earlier_position(two_sources):
    kwargs = dict(global_batch_size=24, weights=ramp, seed=5)
    _, state = read_steps(list(two_sources), 2, 4, 0, steps=9, **kwargs)
    loader = create_loader(list(two_sources), BLOCK_SIZE, 4, **kwargs)
    assert loader.dataset.state_at(9, 9 * 24) == counters(state)


COUNT_OPENS = """
import sys, warnings
from pathlib import Path
from lit_gpt.data.loader import ShardedBlocks
directory = sys.argv[1]
opened = []
def count(event, args):
    if event == "open" and str(args[0]).startswith(directory):
        opened.append(args[0])
sys.addaudithook(count)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    source = ShardedBlocks(Path(directory), 7)
print(len(opened), source.num_blocks, len(caught), *[str(w.message) for w in caught])
"""


def test_an_index_makes_the_start_read_a_handful_of_files(tmp_path):
    directory = tmp_path / "many"
    directory.mkdir()
    for number in range(5000):
        write_shard(
            directory / f"train_many_0_{number:010d}.bin", np.full(16 + 8 * (number % 2), number, dtype=np.uint16)
        )

    def start() -> list[str]:
        command = [sys.executable, "-c", COUNT_OPENS, str(directory)]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split(maxsplit=3)

    opened, blocks, warned, message = start()
    assert int(opened) == 5000 and int(blocks) == 12500 and int(warned) == 1
    assert "5,000 of 5,000 shards are not in an index" in message and "index_shards.py" in message
    index_directory(directory)
    assert start()[:3] == ["1", "12500", "0"]  # index.json only


def test_an_index_and_the_headers_give_the_same_source(tmp_path):
    make_dataset(tmp_path / "plain", [3, 5, 2], tail=2, index=False)
    make_dataset(tmp_path / "indexed", [3, 5, 2], tail=2)
    with pytest.warns(UserWarning, match="not in an index"), pytest.warns(UserWarning, match="2 tokens at shard"):
        plain = ShardedBlocks(tmp_path / "plain", BLOCK_SIZE)
    with pytest.warns(UserWarning, match="2 tokens at shard ends"):
        indexed = ShardedBlocks(tmp_path / "indexed", BLOCK_SIZE)
    assert plain.fingerprint().digest == indexed.fingerprint().digest
    assert [plain.locate(k) for k in range(30)] == [indexed.locate(k) for k in range(30)]


def test_token_ids_outside_the_vocabulary_are_refused_naming_the_shard(tmp_path):
    make_dataset(tmp_path / "data", [3, 3])  # ids up to 47
    with pytest.raises(
        ValueError, match="train_test_0_0000000001.bin: token id 47 is outside the model's vocab.* of 40"
    ):
        ShardedBlocks(tmp_path / "data", BLOCK_SIZE, vocab_size=40)
    ShardedBlocks(tmp_path / "data", BLOCK_SIZE, vocab_size=48)
    make_dataset(tmp_path / "unindexed", [3, 3], index=False)  # only found when the shard is opened
    with pytest.warns(UserWarning, match="not in an index"):
        loader = create_loader([tmp_path / "unindexed"], BLOCK_SIZE, 6, vocab_size=40)
    with pytest.raises(
        ValueError, match="train_test_0_0000000001.bin: token id 47 .*outside the model's vocab.* of 40"
    ):
        list(zip(range(10), loader, strict=False))  # found when its block is read


def test_a_stale_index_or_a_changed_shard_is_refused(tmp_path):
    make_dataset(tmp_path / "data", [3, 3])
    (tmp_path / "data" / "train_test_0_0000000001.bin").unlink()
    with pytest.raises(ValueError, match="1 shard.* listed in index.json are not there .*train_test_0_0000000001.bin"):
        ShardedBlocks(tmp_path / "data", BLOCK_SIZE)
    write_shard(tmp_path / "data" / "train_test_0_0000000001.bin", np.arange(16, dtype=np.int32))
    loader = create_loader([tmp_path / "data"], BLOCK_SIZE, 6)
    with pytest.raises(ValueError, match="16 tokens of int32, but the index says 24 .* changed after it was indexed"):
        next(iter(loader))


def test_each_shard_is_checked_once_when_first_opened(tmp_path, monkeypatch):
    """The content check reads a shard once per reader, not at every epoch that reopens it; with the
    index's checksum a same-size replacement is refused at its first open."""
    make_dataset(tmp_path / "data", [1] * 19 + [4])  # more shards than the loader keeps open
    scanned = Counter()
    scan = integrity.ShardChecks._value

    def counting_scan(checks, shard, tokens):
        scanned[checks.names[shard]] += 1
        return scan(checks, shard, tokens)

    monkeypatch.setattr(integrity.ShardChecks, "_value", counting_scan)
    loader = create_loader([tmp_path / "data"], BLOCK_SIZE, 23)
    list(zip(range(3), loader, strict=False))  # three epochs of 23 blocks: every shard reopened
    assert scanned == {f"train_test_0_{i:010d}.bin": 1 for i in range(20)}
    write_shard(tmp_path / "data" / "train_test_0_0000000019.bin", np.arange(32, dtype=np.int32)[::-1].copy())
    with pytest.raises(ValueError, match="train_test_0_0000000019.bin: its content is not what was indexed"):
        list(zip(range(1), create_loader([tmp_path / "data"], BLOCK_SIZE, 23), strict=False))


def test_a_name_prefix_selects_one_source_of_a_shared_directory(tmp_path):
    make_dataset(tmp_path / "mixed", [2, 2])
    write_shard(tmp_path / "mixed" / "validation_test_0_0000000000.bin", np.arange(10**6, 10**6 + 24, dtype=np.int32))
    index_directory(tmp_path / "mixed")
    train = ShardedBlocks(tmp_path / "mixed", BLOCK_SIZE, prefix="train_")
    valid = ShardedBlocks(tmp_path / "mixed", BLOCK_SIZE, prefix="validation_")
    assert (train.num_blocks, valid.num_blocks) == (4, 3)
    with pytest.raises(FileNotFoundError, match="holds no test_\\*.bin shards"):
        ShardedBlocks(tmp_path / "mixed", BLOCK_SIZE, prefix="test_")


def test_fingerprint_names_what_changed():
    old = Fingerprint(["a.bin", "b.bin", "c.bin"], [10, 20, 30])
    assert old.changes_since(Fingerprint(["a.bin", "b.bin", "c.bin"], [10, 20, 30])) is None
    new = Fingerprint(["a.bin", "c.bin", "d.bin"], [10, 31, 5])
    assert new.changes_since(old) == (
        "1 shard(s) added (e.g. d.bin); 1 shard(s) removed (e.g. b.bin); 1 shard(s) resized (e.g. c.bin)"
    )


def test_clear_errors_for_unusable_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Dataset directory {tmp_path / 'nope'} does not exist"):
        ShardedBlocks(tmp_path / "nope", BLOCK_SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .bin shards"):
        ShardedBlocks(tmp_path / "empty", BLOCK_SIZE)
    (tmp_path / "small").mkdir()
    write_shard(tmp_path / "small" / "x.bin", np.arange(5, dtype=np.uint16))
    with pytest.raises(ValueError, match="No shard in .* holds a whole block of 8 tokens"), pytest.warns(UserWarning):
        ShardedBlocks(tmp_path / "small", BLOCK_SIZE)
    (tmp_path / "small" / "index.json").write_text('{"version": 1, "names": []}')
    with pytest.raises(ValueError, match="index.json: not a usable shard index"):
        ShardedBlocks(tmp_path / "small", BLOCK_SIZE)


@pytest.mark.filterwarnings("ignore:.*not in an index")
def test_shards_of_a_non_integer_dtype_are_refused(tmp_path):
    (tmp_path / "floats").mkdir()
    write_shard(tmp_path / "floats" / "x.bin", np.arange(64, dtype=np.float32))
    with pytest.raises(ValueError, match="x.bin: tokens of dtype float32"):
        ShardedBlocks(tmp_path / "floats", BLOCK_SIZE)


def test_unreadable_tail_tokens_are_reported(tmp_path, recwarn):
    make_dataset(tmp_path / "data", [3], tail=5)
    with pytest.warns(UserWarning, match="5 tokens at shard ends do not fill a block of 8 tokens"):
        ShardedBlocks(tmp_path / "data", BLOCK_SIZE)
    make_dataset(tmp_path / "large", [100, 99], tail=5)  # a job's last shard: under 1%, counted, not warned
    assert ShardedBlocks(tmp_path / "large", BLOCK_SIZE).unused_tokens == 5 and not recwarn.list


def test_bad_weights_and_batch_sizes_are_refused(two_sources):
    with pytest.raises(ValueError, match="must be 2 non-negative numbers with a positive sum, got \\[0.0, 0.0\\]"):
        create_loader([(two_sources[0], 0), (two_sources[1], 0)], BLOCK_SIZE, 2)
    with pytest.raises(ValueError, match="global batch size 10 is not a positive multiple of world size 2 x micro"):
        create_loader(list(two_sources), BLOCK_SIZE, 4, global_batch_size=10, world_size=2)


def test_a_state_taken_between_micro_batches_is_refused_on_another_split(two_sources):
    """Mid-step, the micro-batches done are a set of positions that only the same split can continue;
    at a step boundary any split continues."""
    loader = create_loader(list(two_sources), BLOCK_SIZE, 6, 24, rank=0, world_size=2)
    iterator = iter(loader)
    next(iterator)  # one of the step's two micro-batches
    mid_step = loader.state_dict()
    assert mid_step["micro_batch"] == 1 and (mid_step["world_size"], mid_step["micro_batch_size"]) == (2, 6)
    for world_size, micro in ((4, 6), (2, 3), (1, 6)):
        other = create_loader(list(two_sources), BLOCK_SIZE, micro, 24, rank=0, world_size=world_size)
        with pytest.raises(
            InvalidInput, match=f"middle of step 0 .* on 2 rank\\(s\\) x micro-batch 6.* not on {world_size} x {micro}"
        ):
            other.load_state_dict(mid_step)
    same = create_loader(list(two_sources), BLOCK_SIZE, 6, 24, rank=0, world_size=2)
    same.load_state_dict(mid_step)
    next(iterator)  # the step is done
    boundary = loader.state_dict()
    assert boundary["micro_batch"] == 0
    create_loader(list(two_sources), BLOCK_SIZE, 6, 24, rank=0, world_size=4).load_state_dict(boundary)


def test_a_version_2_index_from_before_boundaries_were_recorded_still_trains(tmp_path):
    """The committed fixture: an index from before tokenizer.json (its shards SentencePiece, BOS before each
    document, the boundary not recorded) is read, agrees with the demo SentencePiece tokenizer and is
    refused with another."""
    from lit_gpt import Config
    from lit_gpt.run import RunConfig

    from conftest import DEMO_BPE_TOKENIZER, DEMO_TOKENIZER, REPO_ROOT

    source = ShardedBlocks(REPO_ROOT / "tests" / "fixtures" / "index-v2", block_size=32)
    (record,) = source.tokenizers.values()
    assert record.boundary is None and source.num_blocks == 4
    config = Config.from_name("tiny_LLaMA_5M")
    check_tokenizer(RunConfig(tokenizer_path=DEMO_TOKENIZER), config, [source])
    with pytest.raises(InvalidInput, match="records shards made with another tokenizer"):
        check_tokenizer(RunConfig(tokenizer_path=DEMO_BPE_TOKENIZER), config, [source])


def test_index_files_that_disagree_only_among_the_ones_naming_a_boundary_are_refused(tmp_path):
    """An index without a boundary agrees with any; two that name different ones do not, whatever the order."""
    from lit_gpt.data.index import Index, ShardTable, read_directory_index

    before = {"token": "<s>", "id": 1, "position": "before"}
    after = {"token": "</s>", "id": 2, "position": "after"}
    for name, boundary in (("a.index.json", None), ("b.index.json", before), ("c.index.json", after)):
        one = np.ones(1, dtype=np.int64)
        Index(ShardTable([f"{name}.bin"], one, ["uint16"], one, one), "f" * 64, boundary).write(tmp_path / name)
    with pytest.raises(InvalidInput, match="index files of two tokenizers, b.index.json .* and c.index.json"):
        read_directory_index(tmp_path, ["a.index.json", "b.index.json", "c.index.json"])


def test_reindexing_replaces_the_preparation_indexes_and_reports_what_changed(tmp_path):
    """A removed shard stops being listed anywhere; a replaced one is indexed as it is now and named;
    the entries of shards outside --prefix are carried over unchanged."""
    directory = tmp_path / "data"
    make_dataset(directory, [2, 2, 2])
    (directory / "index.json").rename(directory / "train_test_0.index.json")  # what preparation names it
    write_shard(tmp_path / "validation_test_0_0000000000.bin", np.arange(16, dtype=np.int32))
    index_directory(tmp_path, prefix="validation_")  # a second preparation job's index, of another prefix
    (tmp_path / "validation_test_0_0000000000.bin").rename(directory / "validation_test_0_0000000000.bin")
    (tmp_path / "index.json").rename(directory / "validation_test_0.index.json")
    (directory / "train_test_0_0000000002.bin").unlink()
    with pytest.raises(InvalidInput, match="1 shard\\(s\\) listed in train_test_0.index.json are not there"):
        ShardedBlocks(directory, BLOCK_SIZE, prefix="train_")
    write_shard(directory / "train_test_0_0000000001.bin", np.arange(100, 116, dtype=np.int32))  # replaced
    done = index_directory(directory, prefix="train_")
    assert done.missing == ["train_test_0_0000000002.bin"] and done.changed == ["train_test_0_0000000001.bin"]
    assert done.replaced == ["train_test_0.index.json", "validation_test_0.index.json"]
    assert sorted(p.name for p in directory.glob("*.json")) == ["index.json"]
    assert done.index.shards.names == sorted(p.name for p in directory.glob("*.bin"))
    assert done.index.shards.checksums[-1] >= 0  # the validation shard's entry, carried over
    train = ShardedBlocks(directory, BLOCK_SIZE, prefix="train_")
    assert train.num_blocks == 4 and list(train.max_ids) == [15, 115]
    assert ShardedBlocks(directory, BLOCK_SIZE, prefix="validation_").num_blocks == 2
