"""prepare_corpus.py on every format: the shards equal an independent recount (the documents read with
pyarrow, json or datasets directly, then tokenized), skips are counted as planted, files are cut into
pieces without changing a byte, and the presets write what they wrote before pieces existed."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lit_gpt.data import formats
from lit_gpt.data import prepare as preparation
from lit_gpt.data.corpora import Documents
from lit_gpt.data.skips import Skips

from conftest import REPO_ROOT, TOKENIZER, assert_refused, shard_tokens, split_documents

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "prepare-v1"
SMALL_PIECES = 4096  # bytes of JSON lines or Arrow batches per piece: many pieces per test file


def prepare_command(script: str, piece_bytes: int) -> list[str]:
    """A prepare script run as a user would, with formats.PIECE_BYTES set in its process."""
    setup = f"import lit_gpt.data.formats as f; f.PIECE_BYTES = {piece_bytes}; "
    run = f"import runpy; runpy.run_path({str(REPO_ROOT / 'scripts' / script)!r}, run_name='__main__')"
    return [sys.executable, "-c", setup + run, "--tokenizer_path", str(TOKENIZER.path)]


def run_script(script: str, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*prepare_command(script, SMALL_PIECES), *args], capture_output=True, text=True, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


def texts(count: int, seed: int) -> list[str]:
    words = "river stone cloud field light paper garden window bridge number".split()
    return [
        f"Doc {seed}-{i}: " + " ".join(words[(i * 3 + j * seed) % 10] for j in range(5 + i % 60)) for i in range(count)
    ]  # noqa: E501


# Planted in every file: (record, reason it is skipped). A record's "lang" of "de" is excluded.
PLANTED = [
    ({"text": None}, "no text field"),
    ({"text": ""}, "empty document"),
    ({"text": "Guten Tag", "meta": {"lang": "de"}}, "excluded meta.lang=de"),
]
JSON_ONLY = [({"meta": {"lang": "en"}}, "no text field"), ({"text": 7}, "text not a string")]


def records(count: int, seed: int, json_lines: bool) -> list[dict]:
    """Good documents with the planted records spread among them; every record has the same keys for
    the columnar formats."""
    rows = [{"text": text, "meta": {"lang": "en"}} for text in texts(count, seed)]
    planted = PLANTED + (JSON_ONLY if json_lines else [])
    for k, (record, _) in enumerate(planted):
        rows.insert((k + 1) * count // (len(planted) + 1), {"meta": {"lang": "en"}} | record)
    return rows


def write(path: Path, kind: str, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=40)
    elif kind == "arrow":
        dataset = datasets.Dataset.from_list(rows)
        dataset.save_to_disk(str(path), num_shards=2)  # a folder: data-0000{0,1}-of-00002.arrow + metadata
    elif kind == "jsonl.gz":
        path.write_bytes(gzip.compress(lines))
    elif kind == "jsonl.zst":
        compressor = zstandard.ZstdCompressor()  # two frames, as concatenated or pzstd-written files have
        path.write_bytes(compressor.compress(lines[: len(lines) // 2]) + compressor.compress(lines[len(lines) // 2 :]))
    else:
        path.write_bytes(lines)


def recount(path: Path, kind: str) -> list[str]:
    """The kept documents of a written file, read with the format's own library."""
    if kind == "parquet":
        rows = pq.read_table(path).to_pylist()
    elif kind == "arrow":
        rows = datasets.load_from_disk(str(path)).to_list()
    else:
        data = path.read_bytes()
        data = gzip.decompress(data) if kind == "jsonl.gz" else data
        if kind == "jsonl.zst":
            data = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
        rows = [json.loads(line) for line in data.decode().splitlines()]
    return [
        row["text"]
        for row in rows
        if isinstance(row.get("text"), str) and row["text"].strip() and (row.get("meta") or {}).get("lang") != "de"
    ]


KINDS = ["parquet", "jsonl", "jsonl.gz", "jsonl.zst", "arrow"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_equals_an_independent_recount(tmp_path, kind):
    source = tmp_path / "corpus"
    name = "set" if kind == "arrow" else f"part-0.{kind}"
    json_lines = kind.startswith("jsonl")
    write(source / name, kind, records(600, seed=3, json_lines=json_lines))
    out = tmp_path / "out"
    args = ["--source_path", str(source), "--source", "any", "--destination_path", str(out), "--num_workers", "2"]
    args += ["--exclude", "{meta.lang: [de]}", "--chunk_size", "1000", "--block_size", "999"]
    result = run_script("prepare_corpus.py", *args)
    expected = recount(source / name, kind)
    assert split_documents(shard_tokens(out)) == [TOKENIZER.encode(text, bos=False) for text in expected]
    planted = PLANTED + (JSON_ONLY if json_lines else [])
    for reason in {reason for _, reason in planted}:
        count = sum(1 for _, r in planted if r == reason)
        assert f"skipped {count} x {reason}" in result.stdout, (reason, result.stdout)
    assert "Traceback" not in result.stderr


def test_pieces_cut_files_by_content_and_are_bounded(tmp_path, monkeypatch):
    """Row groups for parquet, runs of lines of about PIECE_BYTES for JSON lines, runs of batches for
    Arrow; line numbers and rows continue across pieces."""
    monkeypatch.setattr(formats, "PIECE_BYTES", SMALL_PIECES)
    rows = records(600, seed=5, json_lines=False)
    write(tmp_path / "a.parquet", "parquet", rows)
    cut = list(formats.pieces(tmp_path / "a.parquet", ["text"]))
    groups = -(-len(rows) // 40)
    assert [p.number for p in cut] == list(range(groups)) and [p.last for p in cut] == [False] * (groups - 1) + [True]
    assert [p.first for p in cut] == list(range(0, len(rows), 40))
    write(tmp_path / "b.jsonl.zst", "jsonl.zst", rows)
    cut = list(formats.pieces(tmp_path / "b.jsonl.zst", ["text"]))
    assert len(cut) > 10 and all(SMALL_PIECES <= len(p.lines) < SMALL_PIECES + 1000 for p in cut[:-1])
    assert b"".join(p.lines for p in cut) == b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    where = [w for p in cut for w, _ in formats.records(p, ["text"], Skips())]
    assert where == [f"{tmp_path / 'b.jsonl.zst'}:{n}" for n in range(1, len(rows) + 1)]
    batches = [pa.RecordBatch.from_pylist([{"text": "x" * 1000}] * 3) for _ in range(20)]
    with pa.ipc.new_stream(tmp_path / "c.arrow", batches[0].schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    cut = list(formats.pieces(tmp_path / "c.arrow", ["text"]))
    assert [(p.start, p.stop, p.first) for p in cut[:2]] == [(0, 2, 0), (2, 4, 6)] and cut[-1].stop == 20
    assert sum(1 for p in cut for _ in formats.records(p, ["text"], Skips())) == 60


def mixed_corpus(root: Path) -> list[str]:
    """Every format in one folder, with what a download brings besides (metadata, a .cache folder, a
    README); returns the kept documents in the order of the sorted files."""
    files = [("a/part-0.parquet", "parquet"), ("b/part-1.jsonl.zst", "jsonl.zst"), ("c/part-2.jsonl", "jsonl")]
    files += [("d/set", "arrow"), ("e/part-3.json.gz", "jsonl.gz")]
    kept = []
    for seed, (name, kind) in enumerate(files):
        write(root / name, kind, records(300, seed=seed + 1, json_lines=kind.startswith("jsonl")))
        kept += recount(root / name, kind)
    (root / "README.md").write_text("# a corpus\n")
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "x.jsonl").write_text("not a corpus file\n")
    return kept


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.bin"))} | {
        p.name: p.read_bytes() for p in directory.glob("*.index.json")
    }


def test_a_folder_of_every_format_gives_the_same_bytes_for_1_and_3_workers(tmp_path):
    kept = mixed_corpus(tmp_path / "corpus")
    outputs = []
    for workers in ("1", "3"):
        out = tmp_path / f"out{workers}"
        args = ["--source_path", str(tmp_path / "corpus"), "--source", "mix", "--destination_path", str(out)]
        args += [
            "--chunk_size",
            "3000",
            "--block_size",
            "999",
            "--num_workers",
            workers,
            "--exclude",
            "{meta.lang: [de]}",
        ]
        result = run_script("prepare_corpus.py", *args)
        outputs.append(shard_bytes(out))
    assert "Ignored 3 files of other kinds" in result.stdout  # README.md and the Arrow folder's two JSON files
    assert outputs[0] == outputs[1] and len(outputs[0]) > 10
    assert split_documents(shard_tokens(tmp_path / "out1")) == [TOKENIZER.encode(t, bos=False) for t in kept]


def test_patterns_choose_files_and_a_killed_run_resumes_mid_file(tmp_path, no_process_left):
    """kill -9 while a multi-piece file is half taken; the rerun resumes at its next piece."""
    source = tmp_path / "corpus"
    for i in range(3):
        write(source / "sub" / "train" / f"{i}.jsonl.zst", "jsonl.zst", records(400, seed=i + 1, json_lines=True))
    write(source / "sub" / "validation" / "v.jsonl.zst", "jsonl.zst", records(50, seed=9, json_lines=True))
    args = ["--source_path", str(source), "--pattern", "*/train/*.jsonl.zst", "--source", "pp", "--split", "train"]
    args += ["--chunk_size", "1000", "--block_size", "999", "--num_workers", "2", "--exclude", "{meta.lang: [de]}"]
    reference = tmp_path / "reference"
    run_script("prepare_corpus.py", *args, "--destination_path", str(reference))
    expected = [t for i in range(3) for t in recount(source / "sub" / "train" / f"{i}.jsonl.zst", "jsonl.zst")]
    assert split_documents(shard_tokens(reference)) == [TOKENIZER.encode(t, bos=False) for t in expected]

    blocking = source / "sub" / "train" / "1.jsonl.zst"  # a FIFO: the run blocks when it reaches file 1
    content = blocking.read_bytes()
    blocking.unlink()
    os.mkfifo(blocking)
    out = tmp_path / "out"
    log = open(tmp_path / "log", "w")
    command = [*prepare_command("prepare_corpus.py", SMALL_PIECES), *args, "--destination_path", str(out)]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    manifest = out / "train_pp_0.manifest.json"
    deadline = time.monotonic() + 60
    while not (manifest.exists() and json.loads(manifest.read_text())["pieces_done"] >= 1):
        assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "log").read_text()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = json.loads(manifest.read_text())
    assert state["files_done"] == 0 and state["pieces_done"] >= 1
    blocking.unlink()
    blocking.write_bytes(content)
    result = run_script("prepare_corpus.py", *args, "--destination_path", str(out))
    assert f"Resuming after 0 of 3 files and {state['pieces_done']} pieces of the next" in result.stdout
    assert shard_bytes(out) == shard_bytes(reference)
    assert not list(out.glob(".*"))


def test_unreadable_and_mislabelled_files_are_one_line_each_and_counted(tmp_path):
    source = tmp_path / "corpus"
    write(source / "good.jsonl", "jsonl", records(20, seed=1, json_lines=True))
    (source / "gzip-named-zst.jsonl.zst").write_bytes(gzip.compress(b'{"text": "x"}\n'))
    (source / "text-named.parquet").write_text("not parquet\n")
    pq.write_table(pa.table({"content": ["no text column"]}), source / "other-column.parquet")
    write(source / "parquet-named.jsonl", "parquet", records(5, seed=2, json_lines=False))
    out = tmp_path / "out"
    args = ["--source_path", str(source), "--source", "x", "--destination_path", str(out), "--chunk_size", "2049"]
    result = run_script("prepare_corpus.py", *args, "--exclude", "{meta.lang: [de]}", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("  could not read")]
    assert errors == [
        f"  could not read: {source / 'gzip-named-zst.jsonl.zst'}: not a readable zstd file (its content is gzip)",
        f"  could not read: {source / 'other-column.parquet'}: no 'text' column (columns: content)",
        f"  could not read: {source / 'parquet-named.jsonl'}: named as JSON lines but its content is parquet",
        f"  could not read: {source / 'text-named.parquet'}: not a readable parquet file "
        + errors[-1].split("not a readable parquet file ")[1],
    ]
    assert "skipped 4 x unreadable file" in result.stdout
    expected = recount(source / "good.jsonl", "jsonl")
    assert split_documents(shard_tokens(out)) == [TOKENIZER.encode(t, bos=False) for t in expected]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "a b"], "--source 'a b': use letters, digits"),
        (["--pattern", "*.txt"], "No input files: nothing under"),
        (["--source_path", "/nonexistent/corpus"], "No corpus at /nonexistent/corpus"),
    ],
)
def test_wrong_arguments_are_one_line(tmp_path, args, message):
    write(tmp_path / "c" / "a.jsonl", "jsonl", records(3, seed=1, json_lines=True))
    base = {"--source_path": str(tmp_path / "c"), "--source": "ok"}
    base |= dict(zip(args[::2], args[1::2], strict=True))
    result = run_script("prepare_corpus.py", *[w for pair in base.items() for w in pair], check=False)
    assert message in result.stderr
    assert_refused(result)


def test_the_presets_write_the_bytes_written_before_pieces_and_resume_an_old_job(tmp_path):
    """tests/fixtures/prepare-v1 was written by the code before pieces (see its README): its shards and
    index, and a SlimPajama job stopped after 3 of 6 files with pending tokens, which resumes."""
    work = tmp_path / "work"
    shutil.copytree(FIXTURE, work)
    common = ["--chunk_size", "700", "--block_size", "99", "--num_workers", "2"]
    run_script("prepare_slimpajama.py", "--source_path", "corpus/slim", "--destination_path", "slim", *common, cwd=work)
    run_script("prepare_starcoder.py", "--source_path", "corpus/star", "--destination_path", "star", *common, cwd=work)
    assert shard_bytes(work / "slim") == shard_bytes(FIXTURE / "expected" / "slimpajama")
    assert shard_bytes(work / "star") == shard_bytes(FIXTURE / "expected" / "starcoder")
    args = ["--source_path", "corpus/slim", "--destination_path", "interrupted", *common]
    result = run_script("prepare_slimpajama.py", *args, cwd=work)
    assert "Resuming after 3 of 6 files" in result.stdout
    assert shard_bytes(work / "interrupted") == shard_bytes(FIXTURE / "expected" / "slimpajama")
    assert not list((work / "interrupted").glob(".*"))


MEASURED_RUN = """
import re, runpy, sys
import lit_gpt.data.prepare, pyarrow.parquet  # imported before the peak is reset: their cost is not the run's
script, peak_file = sys.argv.pop(1), sys.argv.pop(1)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident memory (VmHWM), Linux 4.0+
try:
    runpy.run_path(script, run_name="__main__")
finally:
    peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]
    open(peak_file, "w").write(peak)
"""


def test_a_parquet_file_larger_than_the_memory_bound_prepares_within_it(tmp_path):
    """A parquet file of 32 row groups of 1 MiB of text: the peak memory of preparing it (one worker)
    is less than 16 MB above that of a file of one such row group, a bound the file's 33 MB of text
    exceeds (the same file as one row group, which is read whole: 116 MB above)."""
    text = "".join(texts(5000, seed=4))[: 1 << 20]
    assert len(text) == 1 << 20
    rows = [text[i : i + (1 << 16)] for i in range(0, len(text), 1 << 16)]
    peaks = {}
    for name, groups in (("small", 1), ("large", 32)):
        path = tmp_path / name / "data.parquet"
        path.parent.mkdir()
        with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
            for _ in range(groups):
                writer.write_table(pa.table({"text": rows}))
        script, peak = str(REPO_ROOT / "scripts" / "prepare_corpus.py"), str(tmp_path / f"{name}.peak")
        args = ["--tokenizer_path", str(TOKENIZER.path), "--source_path", str(path.parent), "--source", name]
        args += ["--num_workers", "1", "--destination_path", str(tmp_path / f"out-{name}")]
        subprocess.run([sys.executable, "-c", MEASURED_RUN, script, peak, *args], check=True, capture_output=True)
        peaks[name] = int((tmp_path / f"{name}.peak").read_text()) / 1024
    assert peaks["large"] - peaks["small"] < 16, peaks


def test_many_unreadable_files_are_counted_and_the_first_named(tmp_path, monkeypatch):
    """A wrong --text_column fails every file: the summary names the first MAX_FAILED and counts the rest,
    and the manifest (rewritten at every commit) holds no more than those."""
    monkeypatch.setattr(preparation, "MAX_FAILED", 3)
    files = []
    for i in range(5):
        files.append(tmp_path / "in" / f"{i}.parquet")
        write(files[-1], "parquet", [{"text": "x", "meta": {"lang": "en"}}])
    progress = preparation.prepare_corpus(
        files, Documents("body"), "x", TOKENIZER.path, tmp_path / "out", "train", 100, 1
    )
    assert progress.skips.counts["unreadable file"] == 5 and len(progress.failed_files) == 3
    assert progress.failed_files[0] == f"{files[0]}: no 'body' column (columns: text, meta)"
    manifest = json.loads((tmp_path / "out" / "train_x_0.manifest.json").read_text())
    assert len(manifest["failed_files"]) == 3
