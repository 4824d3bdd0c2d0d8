"""How long a person waits for ``--help`` or for the line that names a mistaken option.

The training script checks its command line before importing torch and Lightning; the baseline is what
it waited for before (importing the modules it needs to train), measured in the same run on the same
machine. Each figure is the fastest of ``--repeats`` runs of a fresh interpreter.

    python scripts/benchmark_cli.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from lit_gpt.cli import run

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "pretrain" / "tinyllama.py")
CASES = {
    "baseline: import what training needs (lightning, torch, lit_gpt.launch)": ["-c", "import lit_gpt.launch"],
    "pretrain/tinyllama.py --help": [TRAIN, "--help"],
    "pretrain/tinyllama.py --micro_bach_size 4 (a typo)": [TRAIN, "--micro_bach_size", "4"],
    "pretrain/tinyllama.py --micro_batch_size abc (a wrong type)": [TRAIN, "--micro_batch_size", "abc"],
    "scripts/evaluate.py --help": [str(ROOT / "scripts" / "evaluate.py"), "--help"],
    "scripts/prepare_corpus.py --help": [str(ROOT / "scripts" / "prepare_corpus.py"), "--help"],
}


def fastest(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return min(times)


def main(repeats: int = 3) -> None:
    """Print the seconds to each answer, fastest of ``repeats``, and its share of the baseline.

    Args:
        repeats: runs of each command.
    """
    baseline = None
    for name, args in CASES.items():
        seconds = fastest(args, repeats)
        baseline = baseline or seconds
        print(f"{seconds:6.2f} s  {seconds / baseline:5.2f} x baseline  {name}")


if __name__ == "__main__":
    run(main)
