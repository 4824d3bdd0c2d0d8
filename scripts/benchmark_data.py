"""Data-path throughput, each figure against its baseline in the same run.

(a) raw batch encoding of the corpus text by the tokenizer library (all cores): the ceiling for preparation;
(b) scripts/prepare_slimpajama.py end to end, start-up included, on the same text and cores: target
    >= 0.85 x (a);
(c) the training loader in one process, batches of 8 x 2049 tokens: target >= 150M tokens/s;
(d) restoring a loader state at step 1,000,000: target < 2 s;
(e) loader start-up on 406,000 sparse shards (SlimPajama's 286,000 and StarCoder's 120,000 at the
    default chunk size) with and without an index: wall time and files opened; target with the index
    < 2 s and O(1) files;
(f) preparation's per-file time with 100,000 shards already in the output directory against an empty
    one: target ratio <= 1.2;
(g) preparation's memory with 2 workers and a writer slowed to 0.3 s per file: target flat (growth
    within the bound of two tokenized pieces per worker);
(h) the loader with its shard content checks (checksum, or largest id without one) against without, in the
    first epoch after the job's first batch (every shard checked as it is first opened) and the later
    ones: target >= 0.95; the first batch's time (it waits for its shards' checks, once per job); and a
    control: the unchecked loader beside a thread, then a process, that only computes CRC-32s;
(i) a tiny model's resume on the 406,000 indexed sparse shards of (e), on 1 process and on 16 (gloo, all on
    this machine): the start-up to the resumed step (training's "Resumed ... in S s") and what each rank
    reads from the data directories and the checkpoint (lit_gpt/file_trace.py); target < 2 s and no
    per-rank reads proportional to the shard count beyond one index read per job; and the checkpoint's
    non-tensor files: target < 1 MB.

``--cases`` picks figures by letter (default all): ``--cases ei`` runs the start-up and resume figures.

The corpus is the sample corpus's SlimPajama text, repeated into files of about 4 MB until it holds
``--megabytes`` of text.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zstandard
from benchmark_shard_checks import shard_checks  # scripts/, the folder of the script run, is on sys.path
from benchmark_tokenization import preparation_figures
from tqdm import tqdm

from lit_gpt import Tokenizer
from lit_gpt.cli import run
from lit_gpt.data.corpora import slimpajama_documents, slimpajama_files
from lit_gpt.data.index import INDEX_SUFFIX, Index, ShardTable
from lit_gpt.data.loader import create_loader
from lit_gpt.data.prepare import RESULTS_PER_WORKER, prepare_corpus
from lit_gpt.data.shards import (
    DTYPE_CODES,
    HEADER,
    MAGIC,
    VERSION,
    ShardWriter,
    checksum,
)

REPO = Path(__file__).resolve().parents[1]
SLIMPAJAMA = slimpajama_documents(["RedPajamaGithub"])


def benchmark_data(
    tokenizer_path: Path = REPO / "assets" / "tokenizer",
    megabytes: int = 60,
    shards_per_source: list[int] = [286_000, 120_000],  # noqa: B006 (jsonargparse shows the default)
    existing_shards: int = 100_000,
    cases: str = "abcdefghi",
    resume_ranks: list[int] = [1, 16],  # noqa: B006
) -> None:
    """Print the figures and their ratios to the targets.

    Args:
        tokenizer_path: the tokenizer to tokenize with (the figures in BENCHMARKS.md use the demo
            tokenizer; scripts/benchmark_tokenization.py compares the backends and datatrove).
        megabytes: text to tokenize; the issue asks for at least 50.
        shards_per_source: sparse shards of the two sources for the start-up figure (e).
        existing_shards: shards already in the output directory for the preparation figure (f).
        cases: the figures to measure, by letter.
        resume_ranks: the numbers of processes that (i) resumes on.
    """
    cores = os.cpu_count() or 1
    tokenizer = Tokenizer(tokenizer_path)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if set(cases) & set("abcdg"):
            source, texts, shards = corpus_figures(workdir, tokenizer, megabytes, cores)
        if "e" in cases or "i" in cases:
            directories = indexed_sparse_sources(workdir / "startup", shards_per_source)
        if "e" in cases:
            startup(workdir / "startup", directories)
        if "f" in cases:
            preparation_overhead(workdir / "overhead", tokenizer_path, existing_shards)
        if "g" in cases:
            preparation_memory(sorted(source.glob("train/chunk1/*.jsonl.zst")), tokenizer_path, workdir / "memory")
        if "h" in cases:
            shard_checks(workdir / "checks")
        if "i" in cases:
            resume_at_scale(workdir / "resume", directories, tokenizer_path, resume_ranks)


def corpus_figures(workdir: Path, tokenizer: Tokenizer, megabytes: int, cores: int) -> tuple[Path, list[str], Path]:
    """(a) to (d) on the sample-corpus text: the corpus, its documents and the prepared shards."""
    source, texts, shards, _ = preparation_figures(workdir, tokenizer, megabytes, cores, target=0.85)

    loader = create_loader([shards], block_size=2048, micro_batch_size=8)
    batches, tokens = iter(loader), 0
    next(batches)
    start = time.perf_counter()
    while time.perf_counter() - start < 3:
        for _ in range(100):
            tokens += next(batches).numel()
    load_rate = tokens / (time.perf_counter() - start)
    print(
        f"(c) loader, one process, 8 x 2049:  {load_rate / 1e6:8.2f} M tokens/s "
        f"= {load_rate / 150e6:.2f} x the 150M target"
    )

    start = time.perf_counter()
    restored = create_loader([shards], block_size=2048, micro_batch_size=8)
    position = {"step": 1_000_000, "position": 8_000_000, "taken": [8_000_000], "micro_batch": 0}
    restored.load_state_dict(position | {"world_size": 1, "micro_batch_size": 8})
    next(iter(restored))
    restore_seconds = time.perf_counter() - start
    print(f"(d) restore at step 1,000,000:      {restore_seconds:8.3f} s (target < 2 s)")
    return source, texts, shards


def sparse_shards(directory: Path, prefix: str, count: int, chunk_size: int = 2049 * 1024) -> list[str]:
    """``count`` full-size uint16 shards that take no disk space (a header, then a hole)."""
    directory.mkdir(parents=True, exist_ok=True)
    header = HEADER.pack(MAGIC, VERSION, DTYPE_CODES[np.dtype(np.uint16)], chunk_size)
    names = [f"{prefix}_{i:010d}.bin" for i in range(count)]
    for name in tqdm(names, desc=f"sparse shards in {directory.name}", unit="shard", leave=False):
        with open(directory / name, "wb") as f:
            f.write(header)
            f.truncate(HEADER.size + 2 * chunk_size)
    return names


MEASURE_STARTUP = """
import sys, time, warnings
from pathlib import Path
from lit_gpt.data.loader import ShardedBlocks
warnings.simplefilter("ignore")
root = sys.argv[1]
opened = 0
def count(event, args):
    global opened
    opened += event == "open" and str(args[0]).startswith(root)
sys.addaudithook(count)
start = time.perf_counter()
sources = [ShardedBlocks(Path(d), 2048) for d in sys.argv[2:]]
print(time.perf_counter() - start, opened, sum(s.num_blocks for s in sources))
"""


def indexed_sparse_sources(root: Path, shards_per_source: list[int]) -> list[Path]:
    """SlimPajama's and StarCoder's shard counts as sparse shards (all zeros), each source with the index
    its preparation would write: the checksums are those of the zeros, full-width numbers as real ones are."""
    directories = []
    for source, count in zip(("slimpajama", "starcoder"), shards_per_source, strict=True):
        directory = root / source
        names = sparse_shards(directory, f"train_{source}_0", count)
        crc = checksum(np.zeros(2049 * 1024, dtype=np.uint16))
        table = ShardTable(
            names, np.full(count, 2049 * 1024), ["uint16"] * count, np.full(count, 31999), np.full(count, crc)
        )
        Index(table).write(directory / f"train_{source}_0{INDEX_SUFFIX}")  # as preparation writes it
        directories.append(directory)
    return directories


def startup(root: Path, directories: list[Path]) -> None:
    """(e): one rank's loader start-up, in a fresh process, with the index and without it."""

    def measure() -> tuple[float, int, int]:
        command = [sys.executable, "-c", MEASURE_STARTUP, str(root), *map(str, directories)]
        seconds, opened, blocks = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
        return float(seconds), int(opened), int(blocks)

    total = sum(len(os.listdir(directory)) - 1 for directory in directories)
    indexed = measure()
    for directory in directories:
        for index in Path(directory).glob(f"*{INDEX_SUFFIX}"):
            index.rename(index.with_name(index.name + ".off"))
    headers = measure()
    for directory in directories:  # back, for (i)
        for index in Path(directory).glob(f"*{INDEX_SUFFIX}.off"):
            index.rename(index.with_name(index.name.removesuffix(".off")))
    assert indexed[2] == headers[2]
    print(
        f"(e) start-up on {total:,} shards:      {indexed[0]:8.2f} s, {indexed[1]} files opened with the index "
        f"(target < 2 s, O(1)); {headers[0]:.2f} s, {headers[1]:,} files opened without"
    )


RESUME_MODEL = "{n_layer: 2, n_embd: 64, n_head: 4, n_query_groups: 2, intermediate_size: 128, block_size: 256}"
SCRIPT = str(REPO / "pretrain" / "tinyllama.py")


class ResumeRun:
    """A tiny model's run on the sparse sources: one step saved as a checkpoint, then resumed from it."""

    def __init__(self, root: Path, directories: list[Path], tokenizer_path: Path) -> None:
        self.root, self.directories, self.tokenizer_path = root, directories, tokenizer_path
        weights = (0.693584, 0.306416)
        pairs = zip(directories, weights, strict=True)
        self.train_data = "[" + ", ".join(f"{{name: {d.name}, path: {d}, weight: {w}}}" for d, w in pairs) + "]"
        self.checkpoint = root / "first" / "step-00000001"
        command = [sys.executable, SCRIPT, *self.args(root / "first", 1, "--max_steps", "1")]
        subprocess.run(command, check=True, capture_output=True)

    def args(self, out: Path, devices: int, *extra: str) -> list[str]:
        # fmt: off
        return [
            "--model_name", "tiny_LLaMA_1b", "--model_config", RESUME_MODEL, "--train_data", self.train_data,
            "--val_data", "null", "--tokenizer_path", str(self.tokenizer_path), "--out_dir", str(out), "--devices",
            str(devices), "--precision", "32-true", "--global_batch_size", "16", "--micro_batch_size", "1",
            "--warmup_steps", "1", "--save_interval", "1", "--num_workers", "0", *extra,
        ]
        # fmt: on

    def resume(self, processes: int) -> tuple[float, list[list[dict]]]:
        """Training's "Resumed ... in S s" on ``processes`` ranks, and what each rank opened and listed."""
        traces = self.root / f"traces-{processes}"
        traced = ["-m", "lit_gpt.file_trace", "--out", str(traces)]
        traced += ["--under", str(self.directories[0].parent), "--under", str(self.checkpoint), "--", SCRIPT]
        launcher = [sys.executable]
        if processes > 1:
            launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]  # then its own -m
        out = self.root / f"resumed-{processes}"
        resume = ["--max_steps", "2", "--resume", str(self.checkpoint)]
        output = subprocess.run(
            [*launcher, *traced, *self.args(out, processes, *resume)], check=True, capture_output=True, text=True
        ).stdout
        seconds = float(output.split("Resumed from ", 1)[1].split(" in ", 1)[1].split(" s ", 1)[0])
        return seconds, [json.loads(path.read_text()) for path in sorted(traces.glob("rank-*.json"))]


def resume_at_scale(root: Path, directories: list[Path], tokenizer_path: Path, ranks: list[int]) -> None:
    """(i): the checkpoint's size, the listings' cost, and the resume on each number of ``ranks``, with a
    control resume on 20 shards: what the process count costs whatever the data."""
    run = ResumeRun(root / "full", directories, tokenizer_path)
    checkpoint = run.checkpoint
    described = {
        p.name: p.stat().st_size for p in checkpoint.iterdir() if p.suffix != ".distcp" and p.name != ".metadata"
    }
    manifests = sum(p.stat().st_size for p in (checkpoint.parent / "data_manifests").iterdir())
    index_bytes = sum(p.stat().st_size for d in directories for p in d.glob(f"*{INDEX_SUFFIX}"))
    entries = sum(len(os.listdir(d)) for d in directories)
    largest = max(described, key=described.get)
    print(
        f"(i) checkpoint at {entries - len(directories):,} shards: non-tensor files "
        f"{sum(described.values()) / 1e6:.3f} MB (target < 1 MB; largest {largest}, {described[largest]:,} bytes); "
        f"the shard lists, {manifests / 1e6:.1f} MB, once per run in data_manifests/"
    )
    listings_cost(directories)
    control = ResumeRun(root / "control", indexed_sparse_sources(root / "control-data", [14, 6]), tokenizer_path)
    for count in ranks:
        seconds, per_rank = run.resume(count)
        control_seconds = control.resume(count)[0]

        def read(events: list[dict], where: Callable[[Path], bool]) -> int:
            return sum(e["bytes"] for e in events if "open" in e and where(Path(e["open"])))

        index = [read(events, lambda p: p.suffix == ".json" and p.parent in directories) for events in per_rank]
        listed = [
            sum(e["entries"] for e in events if "list" in e and Path(e["list"]) in directories) for events in per_rank
        ]
        small = [
            read(events, lambda p: p.parent == checkpoint and p.suffix not in (".distcp", "")) for events in per_rank
        ]
        print(
            f"(i) resume on {count:>2} process(es): {seconds:.2f} s to the resumed step (target < 2 s; 20 shards: "
            f"{control_seconds:.2f} s); per rank: index {max(index[1:] or [0]) / 1e6:.1f} MB on ranks > 0, "
            f"{index[0] / 1e6:.1f} MB on rank 0; directory entries listed {max(listed[1:] or [0]):,} on ranks > 0, "
            f"{listed[0]:,} on rank 0; the checkpoint's non-tensor files {max(small) / 1e3:.1f} kB (format 4: index "
            f"{index_bytes / 1e6:.1f} MB, fingerprint {manifests / 1e6:.1f} MB and {entries:,} entries on every rank)"
        )


def listings_cost(directories: list[Path]) -> None:
    """(i): what reading the listings once and broadcasting them costs, against every rank memory-mapping a
    binary copy of the table (the alternative: no broadcast, but every rank reads the copy)."""
    import pickle

    from lit_gpt.data.loader import read_listing

    start = time.perf_counter()
    listings = [read_listing(directory) for directory in directories]
    read_seconds = time.perf_counter() - start
    payload = pickle.dumps(listings)
    start = time.perf_counter()
    pickle.loads(payload)
    unpickle_seconds = time.perf_counter() - start
    binary = directories[0].parent / "binary"
    binary.mkdir(exist_ok=True)
    for i, listing in enumerate(listings):
        np.save(binary / f"names-{i}.npy", np.array(listing.table.names, dtype="S"))
        np.save(binary / f"tokens-{i}.npy", listing.table.tokens)
    start = time.perf_counter()
    for i in range(len(listings)):
        names = [name.decode() for name in np.load(binary / f"names-{i}.npy", mmap_mode="r").tolist()]
        np.load(binary / f"tokens-{i}.npy", mmap_mode="r")
    mapped_seconds = time.perf_counter() - start
    mapped_bytes = sum(path.stat().st_size for path in binary.iterdir())
    assert names == listings[-1].table.names
    print(
        f"(i) listings: read by rank 0 in {read_seconds:.2f} s, broadcast as {len(payload) / 1e6:.1f} MB, unpickled "
        f"in {unpickle_seconds:.2f} s per rank; a memory-mapped binary table: {mapped_seconds:.2f} s per rank, "
        f"{mapped_bytes / 1e6:.1f} MB read from the filesystem by every rank"
    )


def preparation_overhead(root: Path, tokenizer_path: Path, existing_shards: int, files: int = 1000) -> None:
    """(f): the median time between files (a shard every ~8 files) when preparing the same small files
    into an empty directory and into one that holds other shards. Start-up is not counted."""
    inputs = root / "inputs"
    for i in range(files):
        record = json.dumps({"text": f"Document {i}: " + "lorem ipsum dolor sit amet " * 40, "meta": {}})
        path = inputs / "train" / "chunk1" / f"{i:05d}.jsonl.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress(record.encode()))
    per_file = []
    for existing in (0, existing_shards):
        destination = root / f"with_{existing}"
        sparse_shards(destination, "train_slimpajama_1", existing)  # another machine's shards
        os.sync()  # their metadata is on disk before the timed fsyncs start
        times: list[float] = []
        with writer_hook(lambda tokens, times=times: times.append(time.perf_counter())), quiet():
            prepare_corpus(
                slimpajama_files(inputs, "train"),
                SLIMPAJAMA,
                "slimpajama",
                tokenizer_path,
                destination,
                "train",
                2049,
                1,
            )
        per_file.append(float(np.median(np.diff(times))))
    print(
        f"(f) preparation per file:           {per_file[0] * 1e3:8.2f} ms with 0 shards present, "
        f"{per_file[1] * 1e3:.2f} ms with {existing_shards:,}: ratio {per_file[1] / per_file[0]:.2f} (target <= 1.2)"
    )


def preparation_memory(files: list[Path], tokenizer_path: Path, destination: Path) -> None:
    """(g): resident memory of the preparing process, sampled as each file is written by a slow writer."""
    samples: list[float] = []
    largest: list[int] = []

    def slow(tokens: np.ndarray) -> None:
        time.sleep(0.3)
        samples.append(resident_mib())
        largest.append(tokens.nbytes)

    with writer_hook(slow), quiet():
        prepare_corpus(files, SLIMPAJAMA, "slimpajama", tokenizer_path, destination, "train", 2049 * 1024, 2)
    bound = RESULTS_PER_WORKER * 2 * max(largest) / 2**20
    quarter = len(samples) // 4
    print(
        f"(g) preparation memory, slow writer: {samples[quarter]:7.0f} MiB after a quarter of {len(files)} files, "
        f"{samples[-1]:.0f} MiB at the end, peak {max(samples):.0f} MiB (bound on results held: {bound:.0f} MiB)"
    )


@contextlib.contextmanager
def writer_hook(before_add: Callable[[np.ndarray], None]) -> Iterator[None]:
    """Call ``before_add`` whenever preparation hands a file's tokens to the shard writer."""
    add = ShardWriter.add

    def hooked(writer: ShardWriter, tokens: np.ndarray) -> None:
        before_add(tokens)
        add(writer, tokens)

    ShardWriter.add = hooked
    try:
        yield
    finally:
        ShardWriter.add = add


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


if __name__ == "__main__":
    run(benchmark_data)
