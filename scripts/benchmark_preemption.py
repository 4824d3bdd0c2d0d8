"""What the preemption agreement costs a training step (lit_gpt/preemption.py).

Every rank learns of a signal received by any rank through one more element in the loss's all-reduce
that every step does anyway: the only difference from a build without the agreement is those elements
(``torch.cat`` of the loss sums and the flags -- the stop flag and one data-error flag per rank,
``lit_gpt.rank_failures`` -- and a (3 + W)-element instead of a 2-element all-reduce). This
starts two processes under torchrun (gloo, one thread each, like the demo under torchrun), sets up the
CPU demo's model (tiny_LLaMA_5M, micro-batch 8 x 256 tokens, fp32) sharded as training does, and in one
run times, interleaved:

- the training step itself (``pretrain/tinyllama.py``'s ``train_step``, agreement included), and
- the step's all-reduce with the flag against the same all-reduce without it.

The cost is the difference of the medians, as a fraction of the step's median time (target < 1%).

    python scripts/benchmark_preemption.py                 # 2 processes, 20 steps, 400 all-reduces each way
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.strategies import ModelParallelStrategy

from lit_gpt import GPT, Config
from lit_gpt.cli import load_script, run
from lit_gpt.rank_failures import CheckedBatches
from lit_gpt.run import RunConfig
from lit_gpt.spikes import SpikeGuard

REPO = Path(__file__).resolve().parents[1]


def worker(steps: int, reductions: int, micro_batch_size: int) -> None:
    """One of the torchrun processes: time steps and the two all-reduces; rank 0 prints the figures."""
    tinyllama = load_script(REPO / "pretrain" / "tinyllama.py")  # its train_step and parallelize
    settings = RunConfig(precision="32-true", micro_batch_size=micro_batch_size)
    strategy = ModelParallelStrategy(parallelize_fn=lambda model, mesh: tinyllama.parallelize(model, mesh, settings))
    fabric = L.Fabric(devices=int(os.environ["LOCAL_WORLD_SIZE"]), strategy=strategy, precision="32-true")
    fabric.launch()
    torch.manual_seed(0)
    config = Config.from_name("tiny_LLaMA_5M")
    model = fabric.setup(GPT(config))
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True))
    state = {"model": model, "optimizer": optimizer}
    shape = (micro_batch_size, config.block_size + 1)
    batches = CheckedBatches(iter(lambda: torch.randint(0, config.vocab_size, shape), None), shape)
    guard = SpikeGuard(enabled=False)

    step_seconds = []
    for step in range(steps + 2):  # two untimed steps first
        started = time.perf_counter()
        tinyllama.train_step(fabric, state, batches, 1, 1e-4, 1.0, 0.0, guard, stop_flag=0.0)
        if step >= 2:
            step_seconds.append(time.perf_counter() - started)

    sums = torch.rand(2)
    flags = torch.zeros(1 + fabric.world_size)  # the stop flag and the per-rank data-error flags
    kinds = {
        "with": lambda: fabric.all_reduce(torch.cat([sums, flags]), reduce_op="mean").tolist(),
        "without": lambda: fabric.all_reduce(sums, reduce_op="mean").tolist(),
    }
    seconds = {kind: [] for kind in kinds}
    for round_ in range(reductions):  # interleaved, each kind first every other round: against drift and order
        for kind in sorted(kinds, reverse=round_ % 2 == 1):
            fabric.barrier()
            started = time.perf_counter()
            kinds[kind]()
            seconds[kind].append(time.perf_counter() - started)
    with_flag, without_flag = seconds["with"], seconds["without"]

    if fabric.global_rank == 0:
        step = statistics.median(step_seconds)
        cost = statistics.median(with_flag) - statistics.median(without_flag)
        print(f"step (train_step, agreement included): {step * 1e3:.1f} ms median of {steps}")
        print(
            f"all-reduce with the stop flag {statistics.median(with_flag) * 1e6:.1f} us, without "
            f"{statistics.median(without_flag) * 1e6:.1f} us (medians of {reductions})"
        )
        print(f"agreement: {cost * 1e6:+.1f} us per step = {cost / step:+.4%} of the step (target < 1%)")


def benchmark_preemption(steps: int = 20, reductions: int = 400, micro_batch_size: int = 8, processes: int = 2) -> None:
    """Print the step time and the agreement's cost per step, on ``processes`` torchrun workers.

    Args:
        steps: timed training steps (after two untimed ones).
        reductions: timed all-reduces of each kind.
        micro_batch_size: sequences per step and process (the demo's 8).
        processes: torchrun workers (gloo, one thread each).
    """
    if "LOCAL_RANK" in os.environ:
        worker(steps, reductions, micro_batch_size)
        return
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    arguments = ["--steps", str(steps), "--reductions", str(reductions), "--micro_batch_size", str(micro_batch_size)]
    subprocess.run([*launcher, __file__, *arguments], check=True, cwd=REPO)


if __name__ == "__main__":
    run(benchmark_preemption)
