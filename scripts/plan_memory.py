"""How much memory each GPU of a training recipe needs, worked out on any machine before the run.

Reads the recipe as training does (model, micro-batch, precision, devices, hybrid sharding) and prints,
for each activation-checkpointing mode, the bytes one device holds at the peak of a step
(``lit_gpt.memory``: sharded states, gathered weights, activations measured on this CPU, the loss),
with the model's parameters and training FLOPs per token. The recipe's own mode is marked.

    python scripts/plan_memory.py --recipe pretrain/configs/tiny_llama3.yaml --capacity_gib 80
    python scripts/plan_memory.py --recipe pretrain/configs/tiny_llama_v1.yaml --capacity_gib 40
"""

from __future__ import annotations

from pathlib import Path

from lit_gpt.cli import run
from lit_gpt.memory import parameter_counts, plan_memory
from lit_gpt.monitor import flops_per_token
from lit_gpt.run import RunConfig


def main(recipe: Path, capacity_gib: float = 80.0, micro_batch_size: int | None = None) -> None:
    """Print the recipe's memory plan per device.

    Args:
        recipe: a training recipe (pretrain/configs/*.yaml), read as the training script reads it.
        capacity_gib: the card's memory (80 for an A100-80G or H100, 40 for an A100-40G, 141 for an H200).
        micro_batch_size: another micro-batch than the recipe's, to see what would fit.
    """
    settings = RunConfig.from_recipe(recipe, "--num_workers", "0")
    config = settings.model()
    micro_batch = micro_batch_size or settings.micro_batch_size
    devices = settings.devices if isinstance(settings.devices, int) else 1
    shard_size = devices if settings.hybrid_sharding else devices * settings.num_nodes
    precision = settings.precision or "bf16-mixed"
    parameters, _ = parameter_counts(config)
    print(
        f"{config.name}: {parameters:,} parameters, {flops_per_token(config) / 1e9:.2f} GFLOPs per trained token "
        f"(forward and backward, head and attention at {config.block_size} tokens)"
    )
    print(
        f"micro-batch {micro_batch} x {config.block_size} tokens, {precision}, weights sharded over "
        f"{shard_size} devices; activations as PyTorch's kernels save them (fused kernels and torch.compile: less)"
    )
    for mode in ("none", "selective", "full"):
        chosen = "  <- the recipe's" if mode == settings.activation_checkpointing else ""
        print(f"activation_checkpointing {mode}:{chosen}")
        plan = plan_memory(config, micro_batch, precision, mode, shard_size)
        print("\n".join(plan.lines(capacity_gib)))


if __name__ == "__main__":
    run(main)
