import struct

import numpy as np
import pytest

from lit_gpt.data.shards import ShardWriter, read_header, read_shard, token_dtype, write_shard


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_write_then_read(tmp_path, dtype):
    tokens = np.arange(1000, dtype=dtype) * 7
    write_shard(tmp_path / "a.bin", tokens)
    read = read_shard(tmp_path / "a.bin")
    assert read.dtype == dtype and np.array_equal(read, tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left behind


def test_reads_a_shard_built_byte_by_byte_as_the_original_builder_writes_it(tmp_path):
    chunk = np.array([1, 306, 4123, 29889, 1, 13, 0, 0], dtype=np.uint16)  # padded to chunk_size
    blob = b"LITPKDS" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<Q", len(chunk)) + chunk.tobytes()
    (tmp_path / "train_slim_0000000000.bin").write_bytes(blob)
    assert read_shard(tmp_path / "train_slim_0000000000.bin").tolist() == chunk.tolist()


def test_token_dtype_follows_the_vocabulary_size():
    assert token_dtype(32000) == np.uint16
    assert token_dtype(65499) == np.uint16
    assert token_dtype(65500) == np.int32
    assert token_dtype(128256) == np.int32


def header(magic=b"LITPKDS", version=1, code=8, count=4):
    return magic + struct.pack("<Q", version) + struct.pack("<B", code) + struct.pack("<Q", count)


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"LITPK", "5 bytes is shorter than the 24-byte shard header"),
        (header(magic=b"NOTPKDS") + bytes(8), "not a packed shard \\(magic b'NOTPKDS'"),
        (header(version=2) + bytes(8), "unsupported shard version 2"),
        (header(code=9) + bytes(8), "unknown dtype code 9"),
        (
            header(count=4) + bytes(6),
            "header says 4 tokens of uint16 \\(32 bytes with the header\\) but the file has 30",
        ),
        (header(count=4) + bytes(10), "but the file has 34 bytes"),
    ],
)
def test_each_header_defect_names_the_file(tmp_path, blob, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=message) as error:
        read_header(path)
    assert str(path) in str(error.value)


def test_writer_cuts_full_shards_and_keeps_the_tail(tmp_path):
    writer = ShardWriter(tmp_path, "train", "demo", 3, chunk_size=10, dtype=np.uint16)
    for start in range(0, 37, 5):
        writer.add(np.arange(start, min(start + 5, 37), dtype=np.uint16))
    writer.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"train_demo_3_{i:010d}.bin" for i in range(4)]
    shards = [read_shard(tmp_path / name) for name in names]
    assert [len(s) for s in shards] == [10, 10, 10, 7]
    assert np.concatenate(shards).tolist() == list(range(37))


def test_writer_resumes_from_pending_tokens(tmp_path):
    writer = ShardWriter(tmp_path, "train", "demo", 0, 4, np.uint16, next_index=5, pending=np.array([9, 8, 7]))
    writer.add(np.array([6, 5], dtype=np.uint16))
    writer.close()
    assert read_shard(tmp_path / "train_demo_0_0000000005.bin").tolist() == [9, 8, 7, 6]
    assert read_shard(tmp_path / "train_demo_0_0000000006.bin").tolist() == [5]
