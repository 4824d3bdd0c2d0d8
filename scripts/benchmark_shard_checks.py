"""Figure (h) of scripts/benchmark_data.py: what the loader's shard content checks (lit_gpt/data/integrity.py)
cost it, against the loader without them, and a control that explains the first epoch's figure.

``python scripts/benchmark_shard_checks.py`` measures it alone; ``python scripts/benchmark_data.py --cases h``
with the other data figures.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lit_gpt.cli import run
from lit_gpt.data.index import index_directory
from lit_gpt.data.integrity import ShardChecks
from lit_gpt.data.loader import create_loader
from lit_gpt.data.shards import write_shard


class NoChecks(ShardChecks):
    """The loader as it was before shard content checks, for the baseline of (h): each shard is mapped
    when opened (``ShardChecks.open`` with nothing scanned ahead), and nothing is scanned or compared."""

    def ahead(self, shards: list[int]) -> None:
        pass

    def check(self, shard: int, tokens: np.ndarray) -> None:
        pass


def shard_checks(directory: Path, shards: int = 48, epochs: int = 4, rounds: int = 3) -> None:
    """(h): the loader over 48 shards of 1M tokens for 4 epochs, with its shard content checks against
    without them, rounds interleaved. Every shard is checked when the loader first opens it, in the first
    epoch; the later epochs reopen shards that passed, which are not checked again."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(shards):
        write_shard(directory / f"train_x_0_{i:010d}.bin", rng.integers(0, 32000, 2049 * 512, dtype=np.uint16))
    index_directory(directory)
    steps_per_epoch = shards * 512 // 8

    def rates(checked: bool) -> tuple[float, float, float]:
        """Tokens/s in the first epoch after its first batch and in the later epochs, and the seconds of
        the first batch (which waits for the checks of its shards: once per job, not per shard)."""
        loader = create_loader([directory], block_size=2048, micro_batch_size=8, vocab_size=32000)
        if not checked:
            source = loader.dataset.sources[0]
            source.checks = NoChecks(source.directory, source.names, source.checks.checksums, None)
        batches = iter(loader)
        start = time.perf_counter()
        batch_tokens = next(batches).numel()  # every batch has 8 blocks
        first_batch = time.perf_counter() - start
        seconds = []
        for epoch in range(epochs):
            start = time.perf_counter()
            for _ in range(steps_per_epoch - (epoch == 0)):
                next(batches)
            seconds.append(time.perf_counter() - start)
        first_epoch = (steps_per_epoch - 1) * batch_tokens / seconds[0]
        return first_epoch, steps_per_epoch * (epochs - 1) * batch_tokens / sum(seconds[1:]), first_batch

    first, later, beside_thread, beside_process, first_batch = [], [], [], [], []
    for _ in range(rounds):
        unchecked, checked = rates(False), rates(True)
        first.append(checked[0] / unchecked[0])
        later.append(checked[1] / unchecked[1])
        first_batch.append((checked[2], unchecked[2]))
        for ratios, kind in ((beside_thread, "thread"), (beside_process, "process")):
            with checksumming_beside(kind):
                ratios.append(rates(False)[0] / unchecked[0])
    for name, ratios, rate in (("first epoch", first, checked[0]), (f"epochs 2-{epochs}", later, checked[1])):
        print(
            f"(h) loader with shard checks, {name + ':':13} {rate / 1e6:8.2f} M tokens/s = {np.median(ratios):.2f} x "
            f"without (median of {rounds} rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.95)"
        )
    checked_ms, unchecked_ms = (1000 * np.median(column) for column in zip(*first_batch, strict=True))
    print(
        f"(h) the job's first batch (the epoch figures start after it): {checked_ms:.1f} ms with the checks, "
        f"{unchecked_ms:.1f} ms without (it waits for the checks of its shards, once per job)"
    )
    for kind, ratios in (("thread", beside_thread), ("process", beside_process)):
        print(
            f"(h) control: the unchecked loader's first epoch beside a {kind} that only computes CRC-32s: "
            f"{np.median(ratios):.2f} x alone (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


AnyEvent = threading.Event | multiprocessing.synchronize.Event  # the flag of either kind of worker


def checksum_until(started: AnyEvent, stop: AnyEvent) -> None:
    """CRC-32 of one shard-sized buffer, again and again until ``stop``: the checks' CPU work, no files."""
    data = bytes(2 * 2049 * 512)
    started.set()
    while not stop.is_set():
        zlib.crc32(data)


@contextlib.contextmanager
def checksumming_beside(kind: str) -> Iterator[None]:
    """``checksum_until`` running in a thread of this process or in a process of its own meanwhile: what
    the loader loses to the other core's work (a process) and to sharing the interpreter lock (a thread)."""
    context = multiprocessing.get_context("spawn")
    started, stop = (threading.Event(), threading.Event()) if kind == "thread" else (context.Event(), context.Event())
    start = threading.Thread if kind == "thread" else context.Process
    worker = start(target=checksum_until, args=(started, stop))
    worker.start()
    started.wait()  # a spawned process imports this script first
    try:
        yield
    finally:
        stop.set()
        worker.join()


def benchmark_shard_checks(shards: int = 48, epochs: int = 4, rounds: int = 3) -> None:
    """Print figure (h): the loader with its shard content checks against without, and the control.

    Args:
        shards: shards of 1M tokens to read (written to a temporary directory).
        epochs: epochs per measurement; the first checks every shard, the later ones reuse the checks.
        rounds: measurements of each kind, interleaved; the medians are printed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        shard_checks(Path(tmp) / "checks", shards, epochs, rounds)


if __name__ == "__main__":
    run(benchmark_shard_checks)
