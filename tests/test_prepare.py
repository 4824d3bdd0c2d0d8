import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lit_gpt import Tokenizer
from lit_gpt.data import prepare
from lit_gpt.data.corpora import Documents
from lit_gpt.data.index import Index, scan_shard
from lit_gpt.data.shards import read_shard

from conftest import (
    DEMO_BPE_TOKENIZER,
    DEMO_TOKENIZER,
    REPO_ROOT,
    TOKENIZER,
    assert_refused,
    run_prepare,
    shard_tokens,
    split_documents,
)

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def document(i: int) -> str:
    return f"Document {i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(20 + i % 50)) + "\n"


def write_zst(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(line + b"\n" for line in lines)))


def record(text, set_name="RedPajamaC4") -> bytes:
    return json.dumps({"text": text, "meta": {"redpajama_set_name": set_name}}).encode()


def slimpajama_corpus(root: Path, files: int = 6, docs_per_file: int = 30) -> list[str]:
    """A clean SlimPajama-layout corpus; returns the documents in file order."""
    kept = []
    for f in range(files):
        texts = [document(f * 1000 + d) for d in range(docs_per_file)]
        write_zst(root / "train" / f"chunk{1 + f % 2}" / f"example_train_{f}.jsonl.zst", [record(t) for t in texts])
        kept.append((f"chunk{1 + f % 2}/example_train_{f}", texts))
    return [text for _, texts in sorted(kept) for text in texts]


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.bin"))}


def test_bad_input_is_skipped_counted_and_no_token_is_lost(tmp_path):
    source = tmp_path / "slim"
    good = [document(i) for i in range(2005)]  # b holds 2,000: past zstd's 128 kB block, so a cut keeps some
    lines = [
        record(good[0]),
        b'{"text": "unterminated',
        record(good[1]),
        json.dumps({"meta": {}}).encode(),
        b'{"text": "bad byte \xff here"}',
        record("   \n"),
        record("import os\n", set_name="RedPajamaGithub"),
        json.dumps({"text": "lone surrogate \ud800"}).encode(),
        record(good[2]),
    ]
    write_zst(source / "train" / "chunk1" / "a.jsonl.zst", lines)
    whole = zstandard.ZstdCompressor().compress(b"".join(record(t) + b"\n" for t in good[3:2003]))
    (source / "train" / "chunk1" / "b.jsonl.zst").write_bytes(whole[: len(whole) * 2 // 3])  # truncated
    (source / "train" / "chunk1" / "c.jsonl.zst").write_bytes(b"this is no zstd file at all")
    write_zst(source / "train" / "chunk2" / "d.jsonl.zst", [record(t) for t in good[2003:]])
    out = tmp_path / "out"

    result = run_prepare(
        "prepare_slimpajama.py",
        "--source_path",
        str(source),
        "--destination_path",
        str(out),
        "--chunk_size",
        "100",
        "--block_size",
        "99",
        check=False,
    )
    assert result.returncode == 1, result.stderr  # one whole file could not be read
    assert "c.jsonl.zst: not a readable zstd file" in result.stderr
    for reason, count in [
        ("malformed JSON", 1),
        ("no text field", 1),
        ("invalid UTF-8", 2),
        ("empty document", 1),
        ("excluded meta.redpajama_set_name=RedPajamaGithub", 1),
        ("truncated file", 1),
        ("unreadable file", 1),
    ]:
        assert f"skipped {count:,} x {reason}" in result.stdout, (reason, result.stdout)
    assert f"{source / 'train' / 'chunk1' / 'a.jsonl.zst'}:2" in result.stdout  # file:line of the bad JSON

    documents = split_documents(shard_tokens(out))
    truncated_kept = len(documents) - 3 - 2  # the documents read from b before it ends
    assert 0 < truncated_kept < 2000
    kept = good[:3] + good[3 : 3 + truncated_kept] + good[2003:]
    assert documents == [TOKENIZER.encode(text, bos=False) for text in kept]
    assert len(shard_tokens(out)) == sum(1 + len(TOKENIZER.encode(text, bos=False)) for text in kept)
    manifest = json.loads((out / "train_slimpajama_0.manifest.json").read_text())
    assert manifest["complete"] and manifest["tokens"] == len(shard_tokens(out))


@pytest.mark.parametrize("tokenizer_path", [DEMO_TOKENIZER, DEMO_BPE_TOKENIZER], ids=["sentencepiece", "json"])
def test_output_does_not_depend_on_the_number_of_workers(tmp_path, tokenizer_path):
    documents = slimpajama_corpus(tmp_path / "slim")
    tokenizer = Tokenizer(tokenizer_path)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        args = ["--source_path", str(tmp_path / "slim"), "--destination_path", str(out)]
        args += ["--tokenizer_path", str(tokenizer_path), "--chunk_size", "1000", "--block_size", "99"]
        run_prepare("prepare_slimpajama.py", *args, "--num_workers", str(workers))
        outputs.append(shard_bytes(out))
    assert outputs[0] == outputs[1] and len(outputs[0]) > 2
    tokens = shard_tokens(tmp_path / "out1")
    assert split_documents(tokens, tokenizer) == [tokenizer.encode(text, bos=False) for text in documents]
    assert all(len(read_shard(tmp_path / "out1" / name)) == 1000 for name in list(outputs[0])[:-1])
    # The job's index holds what reading each shard gives, the tokenizer's digest and its boundary.
    index = Index.read(tmp_path / "out2" / "train_slimpajama_0.index.json")
    assert index.tokenizer_sha256 == tokenizer.sha256 and index.boundary == tokenizer.boundary.to_dict()
    assert index.shards.names == list(outputs[1])
    scanned = [scan_shard(tmp_path / "out2" / name) for name in index.shards.names]
    shards = index.shards
    columns = (shards.tokens.tolist(), shards.dtypes, shards.max_ids.tolist(), shards.checksums.tolist())
    assert list(zip(*columns, strict=True)) == scanned  # checksums made while writing = those of the files
    assert (tmp_path / "out1" / "train_slimpajama_0.index.json").read_bytes() == (
        tmp_path / "out2" / "train_slimpajama_0.index.json"
    ).read_bytes()


def test_machines_split_the_files_and_write_disjoint_shards(tmp_path):
    documents = slimpajama_corpus(tmp_path / "slim", files=5)
    out = tmp_path / "out"
    for index in range(2):
        args = [
            "--source_path",
            str(tmp_path / "slim"),
            "--destination_path",
            str(out),
            "--chunk_size",
            "500",
            "--block_size",
            "99",
        ]
        run_prepare("prepare_slimpajama.py", *args, "--num_shards", "2", "--shard_index", str(index))
    names = sorted(p.name for p in out.glob("*.bin"))
    assert any(n.startswith("train_slimpajama_0_") for n in names) and any("_1_" in n for n in names)
    together = [
        doc
        for index in range(2)
        for doc in split_documents(
            np.concatenate([read_shard(p) for p in sorted(out.glob(f"train_slimpajama_{index}_*.bin"))])
        )
    ]
    assert sorted(together) == sorted(TOKENIZER.encode(text, bos=False) for text in documents)


@pytest.mark.parametrize(
    "stop, workers, tokenizer_path",
    [("SIGKILL", "1", DEMO_TOKENIZER), ("Ctrl-C", "2", DEMO_TOKENIZER), ("SIGKILL", "2", DEMO_BPE_TOKENIZER)],
)
def test_a_killed_or_interrupted_run_resumes_and_gives_the_same_shards(
    tmp_path, stop, workers, tokenizer_path, no_process_left
):
    """kill -9, or Ctrl-C to the whole process group (workers included): one line, status 130."""
    source = tmp_path / "slim"
    slimpajama_corpus(source, files=8)
    reference = tmp_path / "reference"
    args = ["--source_path", str(source), "--chunk_size", "700", "--block_size", "99", "--num_workers", workers]
    args += ["--tokenizer_path", str(tokenizer_path)]
    run_prepare("prepare_slimpajama.py", *args, "--destination_path", str(reference))

    # The sixth file (in sorted order) becomes a FIFO: reading it blocks, so the run is caught mid-way
    # (after file 5 with one worker; with two, the pieces in flight are not yet taken).
    blocking = sorted((source / "train").glob("chunk*/*.jsonl.zst"))[5]
    content = blocking.read_bytes()
    blocking.unlink()
    os.mkfifo(blocking)
    out = tmp_path / "out"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "prepare_slimpajama.py")]
    process = subprocess.Popen(
        [*command, *args, "--destination_path", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
    )
    manifest = out / "train_slimpajama_0.manifest.json"
    deadline = time.monotonic() + 60
    while not (manifest.exists() and json.loads(manifest.read_text())["files_done"] >= 1):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # blocked: nothing more is committed
    done = json.loads(manifest.read_text())["files_done"]
    assert done == (5 if workers == "1" else 5 - prepare.RESULTS_PER_WORKER * 2)  # the file, less those in flight
    if stop == "SIGKILL":
        process.send_signal(signal.SIGKILL)
        process.wait()
    else:
        os.killpg(process.pid, signal.SIGINT)
        stderr = process.communicate(timeout=60)[1]
        assert process.returncode == 130 and "Traceback" not in stderr, stderr
        lines = [line for line in stderr.splitlines() if line.startswith("Interrupted")]
        assert lines == [
            f"Interrupted (Ctrl-C): {done} of 8 files are committed in {out / 'train_slimpajama_0.manifest.json'}; the "
            "same command resumes after them"
        ], stderr
    assert 0 < len(list(out.glob("*.bin"))) < len(list(reference.glob("*.bin")))

    blocking.unlink()
    blocking.write_bytes(content)
    result = run_prepare("prepare_slimpajama.py", *args, "--destination_path", str(out))
    assert f"Resuming after {done} of 8 files" in result.stdout
    assert shard_bytes(out) == shard_bytes(reference)
    index = "train_slimpajama_0.index.json"
    assert (out / index).read_bytes() == (reference / index).read_bytes()
    assert not list(out.glob(".*"))  # no temporary or pending files left


def test_rerun_of_a_finished_job_does_nothing_and_other_settings_are_refused(tmp_path):
    slimpajama_corpus(tmp_path / "slim", files=2)
    args = ["--source_path", str(tmp_path / "slim"), "--destination_path", str(tmp_path / "out"), "--block_size", "99"]
    run_prepare("prepare_slimpajama.py", *args, "--chunk_size", "500")
    before = shard_bytes(tmp_path / "out")
    assert "nothing to do" in run_prepare("prepare_slimpajama.py", *args, "--chunk_size", "500").stdout
    assert shard_bytes(tmp_path / "out") == before
    result = run_prepare("prepare_slimpajama.py", *args, "--chunk_size", "600", check=False)
    assert result.returncode != 0 and "other settings (chunk_size differ)" in result.stderr
    assert_refused(result)


def test_starcoder_reads_selected_languages_and_skips_bad_rows(tmp_path):
    source = tmp_path / "star"
    (source / "python").mkdir(parents=True)
    (source / "c").mkdir()
    (source / "java").mkdir()
    pq.write_table(
        pa.table({"content": ["def f():\n    return 1\n", None, "", "x = 'é'\n"]}), source / "python" / "a.parquet"
    )
    pq.write_table(pa.table({"content": ["int main() { return 0; }\n"]}), source / "c" / "b.parquet")
    pq.write_table(pa.table({"text": ["no content column"]}), source / "c" / "c.parquet")
    pq.write_table(pa.table({"content": ["class A {}\n"]}), source / "java" / "d.parquet")
    out = tmp_path / "out"
    args = ["--source_path", str(source), "--destination_path", str(out), "--languages", "[python, c]"]
    result = run_prepare("prepare_starcoder.py", *args, check=False)
    assert result.returncode == 1 and "c.parquet: no 'content' column" in result.stderr
    assert "skipped 1 x no text field" in result.stdout and "skipped 1 x empty document" in result.stdout
    expected = ["int main() { return 0; }\n", "def f():\n    return 1\n", "x = 'é'\n"]  # c/ sorts before python/
    assert split_documents(shard_tokens(out)) == [TOKENIZER.encode(t, bos=False) for t in expected]
    assert sorted(p.name for p in out.glob("*.bin")) == ["train_starcoder_0_0000000000.bin"]


def test_missing_inputs_are_clear_errors(tmp_path):
    result = run_prepare("prepare_slimpajama.py", "--source_path", str(tmp_path), check=False)
    assert result.returncode != 0 and "No input files for the slimpajama train split" in result.stderr
    assert_refused(result)
    result = run_prepare("prepare_starcoder.py", "--source_path", str(tmp_path), "--languages", "[rust]", check=False)
    assert result.returncode != 0 and f"No StarCoder language directory {tmp_path / 'rust'}" in result.stderr
    assert_refused(result)


@pytest.mark.parametrize("percentage", ["0", "1.5"])
def test_percentage_outside_the_unit_interval_is_refused(tmp_path, percentage):
    slimpajama_corpus(tmp_path / "slim", files=1)
    result = run_prepare(
        "prepare_slimpajama.py", "--source_path", str(tmp_path / "slim"), "--percentage", percentage, check=False
    )
    assert result.returncode != 0 and "percentage must be in (0, 1]" in result.stderr
    assert_refused(result)


def tiny_files(directory: Path, count: int) -> list[Path]:
    """``count`` JSON-lines files of one short document each."""
    directory.mkdir()
    files = [directory / f"{i:05d}.jsonl" for i in range(count)]
    for i, path in enumerate(files):
        path.write_text(json.dumps({"text": document(i)}) + "\n")
    return files


def test_tokenized_pieces_in_flight_stay_bounded_with_a_slow_writer(tmp_path, monkeypatch):
    events = tmp_path / "events"
    tokenize = prepare._tokenize_piece

    def logged_tokenize(piece, **kwargs):  # runs in the (forked) workers
        with open(events, "a") as log:  # appended by every worker process: the order of events across them
            log.write("started\n")
        return tokenize(piece, **kwargs)

    monkeypatch.setattr(prepare, "_tokenize_piece", logged_tokenize)
    add = prepare.ShardWriter.add

    def slow_add(writer, tokens):
        time.sleep(0.01)
        with open(events, "a") as log:
            log.write("written\n")
        add(writer, tokens)

    monkeypatch.setattr(prepare.ShardWriter, "add", slow_add)
    files = tiny_files(tmp_path / "in", 150)
    prepare.prepare_corpus(files, Documents(), "tiny", DEMO_TOKENIZER, tmp_path / "out", "train", 500, num_workers=2)
    in_flight, most = 0, 0
    for event in events.read_text().split():
        in_flight += 1 if event == "started" else -1
        most = max(most, in_flight)
    assert most <= prepare.RESULTS_PER_WORKER * 2 + 1  # the bound, plus the one the writer holds
    assert split_documents(shard_tokens(tmp_path / "out")) == [
        TOKENIZER.encode(document(i), bos=False) for i in range(150)
    ]


def test_per_file_cost_does_not_grow_with_the_shards_written(tmp_path, monkeypatch):
    """2,000 files, a shard every two files: no directory listing per file, and the last files take no more
    CPU time (user + system, which a busy machine or a slow fsync does not inflate) than the first."""
    files = tiny_files(tmp_path / "in", 2000)
    listings = []
    for name in ("scandir", "listdir"):
        original = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _original=original: listings.append(a) or _original(*a))
    times = []
    add = prepare.ShardWriter.add

    def timed_add(writer, tokens):
        times.append(time.process_time())
        add(writer, tokens)

    monkeypatch.setattr(prepare.ShardWriter, "add", timed_add)
    chunk = 2 * len(TOKENIZER.encode(document(0)))
    prepare.prepare_corpus(files, Documents(), "tiny", DEMO_TOKENIZER, tmp_path / "out", "train", chunk, num_workers=1)
    assert len(list((tmp_path / "out").glob("*.bin"))) > 700
    assert len(listings) <= 2  # once at the start, not per file or per commit
    per_file = np.diff(times)
    first, second = np.median(per_file[:1000]), np.median(per_file[1000:])
    assert second <= 1.5 * first, (first, second)
