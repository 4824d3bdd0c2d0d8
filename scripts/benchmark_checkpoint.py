"""What saving checkpoints costs the training loop: synchronous against background (--async_checkpoint).

Runs ``pretrain/tinyllama.py`` with the CPU demo recipe on random-token shards (made here, in a temporary
directory) three ways, interleaved ``--repeats`` times: without checkpoints, saving every
``--save_interval`` steps synchronously, and the same in the background. The cost of saving is the extra
loop time over the run without checkpoints (the fastest of the repeats, against noise), leaving out the
checkpoint that every run writes at its end; the aim is that a background save costs the loop less than
10% of what a synchronous one does.

    python scripts/benchmark_checkpoint.py                 # the demo model, 40 steps, saving every 5
    python scripts/benchmark_checkpoint.py --save_interval 2 --extra '[--global_batch_size, "8"]'
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lit_gpt.cli import run
from lit_gpt.data.index import index_directory
from lit_gpt.data.shards import write_shard

REPO = Path(__file__).resolve().parents[1]
LOOP = re.compile(r"Trained steps \S+ in ([0-9.]+) s")
PAUSE = re.compile(r"training paused ([0-9.]+) s")
WRITTEN = re.compile(r"written in ([0-9.]+) s")


def train(data: Path, out: Path, steps: int, save_interval: int, background: bool, extra: list[str]) -> dict:
    """One training run; its loop time, and the pauses and write times that it printed."""
    command = [
        sys.executable,
        str(REPO / "pretrain" / "tinyllama.py"),
        "--config",
        str(REPO / "pretrain" / "configs" / "cpu_demo.yaml"),
        "--train_data",
        f"[{{name: random, path: {data}}}]",
        "--val_data",
        "null",
        "--out_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--log_interval",
        str(steps),
        "--save_interval",
        str(save_interval),
        "--keep_checkpoints",
        "2",
        "--async_checkpoint",
        str(background).lower(),
        "--resume",
        "false",
        "--overwrite",
        "true",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(result.stdout[-2000:] + result.stderr[-3000:])
    pauses = [float(x) for x in PAUSE.findall(result.stdout)]
    return {  # without the save at the end of every run, which each kind makes
        "loop_s": float(LOOP.search(result.stdout).group(1)) - pauses[-1],
        "paused_s": sum(pauses[:-1]),
        "written_s": [float(x) for x in WRITTEN.findall(result.stdout)][:-1],
    }


def benchmark_checkpoint(
    steps: int = 40, save_interval: int = 5, repeats: int = 3, extra: list[str] | None = None
) -> None:
    """Print the loop time per step and the cost of saving, synchronous and in the background.

    Args:
        steps: optimizer steps per run.
        save_interval: steps between checkpoints in the runs that save.
        repeats: runs of each kind, interleaved; the fastest counts.
        extra: more options for pretrain/tinyllama.py (e.g. ``["--model_config", "{n_layer: 4}"]``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        write_shard(data / "train_random_0_0000000000.bin", rng.integers(0, 4096, 1025 * 1024, dtype=np.uint16))
        index_directory(data)
        kinds = {"no checkpoints": (steps + 1, False), "synchronous": (save_interval, False)}
        kinds["background"] = (save_interval, True)
        results: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for repeat in range(repeats):
            for kind, (interval, background) in kinds.items():
                results[kind].append(train(data, Path(tmp) / "out", steps, interval, background, extra or []))
                print(f"run {repeat + 1}/{repeats} {kind}: loop {results[kind][-1]['loop_s']:.2f} s", flush=True)
    best = {kind: min(runs, key=lambda r: r["loop_s"]) for kind, runs in results.items()}
    base = best["no checkpoints"]["loop_s"]
    saves = (steps - 1) // save_interval
    print(f"\n{steps} steps, a checkpoint every {save_interval}: {saves} saves before the one at the end")
    print(f"{'':<16} {'s/step':>8} {'cost of saving':>15} {'paused':>8} {'write':>8}")
    for kind, r in best.items():
        cost = r["loop_s"] - base
        write = f"{np.mean(r['written_s']):.2f} s" if r["written_s"] else "-"
        print(f"{kind:<16} {r['loop_s'] / steps:>8.3f} {cost:>13.2f} s {r['paused_s']:>6.2f} s {write:>8}")
    sync_cost = best["synchronous"]["loop_s"] - base
    async_cost = best["background"]["loop_s"] - base
    if sync_cost > 0:
        print(f"background / synchronous cost of saving: {async_cost / sync_cost:.2f}")
    else:
        print("saving costs less than the run-to-run noise here: no ratio (save more often to measure it)")


if __name__ == "__main__":
    run(benchmark_checkpoint)
