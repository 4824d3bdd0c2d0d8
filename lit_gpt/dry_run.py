"""The plan of a training run, printed before any compute is spent on it (``--dry_run true``).

Everything here follows from the settings alone, through the same objects the run uses (the stage plan,
the learning-rate schedule, the data listings), so the numbers are the ones the run will log: steps and
tokens per stage, the global batch and how it splits into processes, micro-batches and accumulation
steps, the learning rate at its landmarks, the mixture and how many epochs of each source it takes, the
validation and checkpoint cadence and the disk the checkpoints need. Nothing is started: no process
group, no model in memory (parameters are counted on the meta device), nothing written.
"""

from __future__ import annotations

import numpy as np
import yaml

from lit_gpt.cli import global_rank
from lit_gpt.data.loader import read_listing
from lit_gpt.errors import UserError
from lit_gpt.launch import launched_world_size
from lit_gpt.memory import parameter_counts
from lit_gpt.monitor import flops_per_token
from lit_gpt.run import RunConfig
from lit_gpt.schedule import StagePlan

STATE_ELEMENTS = 3  # a checkpoint holds each parameter and AdamW's two moments
ELEMENT_BYTES = {"bf16-true": 2, "bf16-mixed": 4, "32-true": 4}


def changed_settings(run: RunConfig) -> dict:
    """The settings that differ from RunConfig's defaults, as JSON values (a recipe that reproduces the run)."""
    defaults = RunConfig().to_dict()
    return {name: value for name, value in run.to_dict().items() if value != defaults[name] and name != "dry_run"}


def recipe_lines(key: str, value: object) -> list[str]:
    """One setting as recipe YAML, each item of a list (a stage, a data source) on a line of its own,
    without the fields it leaves unset (null, empty, false)."""

    def flow(item: object) -> str:
        if isinstance(item, dict):
            item = {
                name: field for name, field in item.items() if field is not None and field is not False and field != ""
            }
        text = yaml.safe_dump(item, default_flow_style=True, sort_keys=False, width=float("inf"))
        return text.strip().removesuffix("\n...")

    if isinstance(value, list) and value:
        return [f"{key}:", *(f"- {flow(item)}" for item in value)]
    return [f"{key}: {flow(value)}"]


def planned_tokens(plan: StagePlan, samples: int = 1000) -> np.ndarray:
    """Tokens the plan draws from each source: each stage's tokens times its mean mixture (a ramp's mean
    from ``samples`` points; exact for a fixed mixture)."""
    total = np.zeros(len(plan.sources))
    for index in range(len(plan.stages)):
        start, end = plan.start_tokens[index], plan.start_tokens[index + 1]
        points = start + (np.arange(samples) + 0.5) * (end - start) / samples
        weights = plan.mixture(points.astype(np.int64))
        total += (end - start) * (weights / weights.sum(axis=1, keepdims=True)).mean(axis=0)
    return total


def source_line(run: RunConfig, index: int, planned: float) -> str:
    """One training source: where it is, what it holds (from its listing, if it is there) and the epochs
    that the plan takes of it."""
    source = run.train_data[index]
    where = f"{source.path}" + (f" ({source.prefix}*)" if source.prefix else "")
    try:
        available = int(read_listing(source.path, source.prefix).table.tokens.sum())
    except UserError as error:
        return f"  {source.name}: about {planned:,.0f} tokens planned; {where}: not readable here ({error})"
    epochs = planned / available if available else float("inf")
    repeat = " (repeated: more than one epoch)" if epochs > 1 else ""
    return (
        f"  {source.name}: about {planned:,.0f} tokens planned of {available:,} in {where}: {epochs:.2f} epochs{repeat}"
    )


def plan_lines(run: RunConfig, world_size: int) -> list[str]:
    """The plan of ``run`` on ``world_size`` processes, as lines to print."""
    config = run.model()
    plan = run.stage_plan(config, world_size)
    rates = run.learning_rates()
    precision = run.resolved_precision()
    parameters, _ = parameter_counts(config)
    per_step = world_size * run.micro_batch_size
    lines = [
        "Dry run: the plan of this command; nothing is started or written (without --dry_run it trains).",
        "Settings that differ from the defaults (every other one has its default: --help):",
        *("  " + line for key, value in changed_settings(run).items() for line in recipe_lines(key, value)),
        f"Model {config.name}: {parameters:,} parameters, {config.n_layer} layers, context {config.block_size}, "
        f"vocabulary {config.vocab_size}; {flops_per_token(config) / 1e9:.2f} GFLOPs per trained token, "
        f"{flops_per_token(config) * plan.max_tokens:.3g} FLOPs in all",
        f"Processes: {world_size} ({run.num_nodes} node(s)), "
        f"{'hybrid sharding (within a node)' if run.hybrid_sharding else 'sharded over all'}; "
        f"micro-batch {run.micro_batch_size} x {config.block_size} tokens, {precision}",
        f"Training: {plan.max_steps:,} steps, {plan.max_tokens:,} tokens, in {len(plan.stages)} stage(s):",
    ]
    for index, stage in enumerate(plan.stages):
        start, end, batch = plan.start_steps[index], plan.start_steps[index + 1], plan.batch_sizes[index]
        mixture = dict(zip(plan.sources, plan.mixtures[index], strict=True))
        ramp = f", ramped from {stage.ramp_from} over {stage.ramp_tokens:,} tokens" if stage.ramp_from else ""
        lines.append(
            f"  stage {stage.name}: steps {start:,}-{end - 1:,} ({end - start:,}), "
            f"{plan.start_tokens[index + 1] - plan.start_tokens[index]:,} tokens; {batch:,} x {config.block_size} = "
            f"{batch * config.block_size:,} tokens per step = {world_size} processes x {run.micro_batch_size} x "
            f"{batch // per_step} accumulation step(s); mixture {mixture}{ramp}"
        )
    landmarks = sorted({0, min(run.warmup_steps, plan.max_steps) - 1, plan.max_steps // 2, plan.max_steps - 1} - {-1})
    if run.lr_schedule == "wsd":
        landmarks = sorted(set(landmarks) | {rates.decay_start(plan)} - {plan.max_steps})
    lines.append(
        f"Learning rate ({run.lr_schedule}, {run.warmup_steps:,} warmup steps): "
        + ", ".join(f"step {step:,} {rates.at(step, plan):.3e}" for step in landmarks)
    )
    if (warning := rates.warmup_warning(plan)) is not None:
        lines.append(f"warning: {warning}")
    lines.append("Data:")
    planned = planned_tokens(plan)
    lines += [source_line(run, index, planned[index]) for index in range(len(run.train_data))]
    validation = ", ".join(f"{source.name} ({source.path})" for source in run.validation_sets()) or "none"
    lines.append(
        f"Validation every {run.eval_interval:,} steps ({plan.max_steps // run.eval_interval:,} times), "
        f"{run.eval_blocks:,} sequences of each set: {validation}"
    )
    if run.eval_tasks:
        lines.append(f"Benchmarks every {run.eval_tasks_interval:,} steps and at the end: {', '.join(run.eval_tasks)}")
    size = STATE_ELEMENTS * ELEMENT_BYTES[precision] * parameters
    saves = len(set(range(run.save_interval, plan.max_steps + 1, run.save_interval)) | {plan.max_steps})
    saves += int(run.save_initial)
    kept = f"the newest {run.keep_checkpoints} kept" if run.keep_checkpoints > 0 else "all kept"
    most = saves if run.keep_checkpoints <= 0 else min(saves, run.keep_checkpoints + 1)
    lines.append(
        f"Checkpoints every {run.save_interval:,} steps and at the end ({saves:,}), {kept}, into {run.out_dir}: "
        f"{size / 1e9:.3g} GB each (weights and AdamW moments), {most * size / 1e9:.3g} GB at most on disk "
        "(the newest is complete before the oldest is removed)"
    )
    return lines


def print_plan(run: RunConfig) -> None:
    """The plan for this launch's processes, printed once (by global rank 0 under a launcher)."""
    if global_rank() == 0:
        print("\n".join(plan_lines(run, launched_world_size(run.devices, run.num_nodes))))
