"""Pretrain a TinyLlama model with Lightning Fabric and FSDP2: one CPU process to many GPU nodes.

    python pretrain/tinyllama.py --config pretrain/configs/tiny_llama_v1.yaml         # one machine
    torchrun --nnodes 2 --nproc_per_node 8 ... pretrain/tinyllama.py --config ...      # a cluster

The loop: per optimizer step, ``accumulation`` micro-batches per rank (gradients synchronised on the
last one only), global-norm clipping, AdamW with the cosine schedule, then logging, validation and
checkpoints at their intervals. A run is a list of stages (lit_gpt.schedule) and resumes exactly from
its newest complete checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import lightning as L
import torch
from lightning.fabric.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lit_gpt import GPT, Config, Tokenizer, kernels
from lit_gpt.checkpoint import (
    DATA_FINGERPRINT,
    check_state_dict,
    complete_checkpoints,
    load_model_weights,
    remove_run,
    resume_checkpoint,
    save_training_state,
)
from lit_gpt.data.index import Fingerprint, file_sha256
from lit_gpt.data.loader import BlockLoader, ShardedBlocks, create_loader
from lit_gpt.monitor import MetricsLogger, Throughput, format_eta
from lit_gpt.schedule import Stage, StagePlan, cosine_lr


@dataclass
class DataSource:
    """A dataset directory of packed shards, its name (for stage mixtures) and its default weight.

    ``prefix`` selects the shards whose names start with it, for a directory that holds several sources
    (the original TinyLlama scripts write ``train_slimpajama*``, ``train_starcoder*`` and ``valid_*``
    into one folder).
    """

    name: str
    path: Path
    weight: float = 1.0
    prefix: str = ""


TINYLLAMA_MIXTURE = [
    DataSource("slimpajama", Path("data/slimpajama/train"), 0.693584),
    DataSource("starcoder", Path("data/starcoder/train"), 0.306416),
]


# The arguments of setup(), whose docstring documents them; recorded in every checkpoint.
Hyperparameters = SimpleNamespace


def setup(
    model_name: str = "tiny_LLaMA_1b",
    model_config: dict | None = None,
    train_data: list[DataSource] | None = None,
    val_data: Path | None = Path("data/slimpajama/validation"),
    val_prefix: str = "",
    tokenizer_path: Path | None = None,
    out_dir: Path = Path("out/tinyllama"),
    devices: int | str = "auto",
    num_nodes: int = 1,
    precision: Literal["bf16-mixed", "bf16-true", "32-true"] | None = None,
    hybrid_sharding: bool = False,
    global_batch_size: int = 1024,
    micro_batch_size: int = 8,
    max_tokens: int | None = None,
    max_steps: int | None = None,
    stages: list[Stage] | None = None,
    learning_rate: float = 4e-4,
    min_lr: float = 4e-5,
    warmup_steps: int = 2000,
    weight_decay: float = 0.1,
    beta1: float = 0.9,
    beta2: float = 0.95,
    grad_clip: float = 1.0,
    log_interval: int = 10,
    eval_interval: int = 1000,
    eval_iters: int = 100,
    save_interval: int = 1000,
    keep_checkpoints: int = 3,
    resume: bool | Literal["auto"] | Path = "auto",
    overwrite: bool = False,
    allow_data_change: bool = False,
    initial_checkpoint: Path | None = None,
    compile: bool = False,
    activation_checkpointing: bool = False,
    logger: Literal["csv", "wandb", "tensorboard"] = "csv",
    num_workers: int = 2,
    seed: int = 42,
    max_nonfinite_steps: int = 10,
) -> None:
    """Pretrain a Llama-architecture model on packed shards.

    Args:
        model_name: a named config (lit_gpt.config), e.g. tiny_LLaMA_1b, tiny_LLaMA_120M, tiny_LLaMA_5M.
        model_config: fields of the config to override, e.g. ``{n_layer: 2}``.
        train_data: dataset directories with names and mixture weights; default SlimPajama 0.693584,
            StarCoder 0.306416 (data/slimpajama/train, data/starcoder/train).
        val_data: a dataset directory for validation, or null for none.
        val_prefix: read only the validation shards whose names start with this (e.g. ``valid_``).
        tokenizer_path: the tokenizer the shards were made with; checked against the model and
            recorded in checkpoints for conversion.
        out_dir: checkpoints, metrics.csv and logs.
        devices: devices (processes) per node; "auto" uses every GPU, or 1 CPU process.
        num_nodes: number of machines.
        precision: bf16-mixed (fp32 weights, bf16 compute), bf16-true or 32-true; default: bf16-mixed
            on GPUs that support it, 32-true otherwise.
        hybrid_sharding: shard within a node and replicate across nodes (TinyLlama v1.1) instead of
            sharding over every device.
        global_batch_size: sequences per optimizer step (TinyLlama: 1024 x 2048 tokens).
        micro_batch_size: sequences per device per forward pass.
        max_tokens: training length in tokens, for a run without stages.
        max_steps: training length in optimizer steps, for a run without stages.
        stages: stages with their own token budget, batch size and mixture (TinyLlama v1.1).
        learning_rate: peak learning rate.
        min_lr: learning rate at the last step.
        warmup_steps: linear warmup steps.
        weight_decay: AdamW weight decay.
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: maximum global gradient norm.
        log_interval: optimizer steps between console/metrics lines.
        eval_interval: optimizer steps between validations.
        eval_iters: micro-batches per rank in a validation.
        save_interval: optimizer steps between checkpoints (one is also written at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        resume: "auto" continues from the newest complete checkpoint in out_dir if there is one; a path
            resumes from that checkpoint (on any number of devices); false starts a new run, which an
            out_dir holding checkpoints refuses unless overwrite is true.
        overwrite: with resume false, delete the checkpoints and metrics of the run already in out_dir.
        allow_data_change: resume even though the training shards differ from the checkpoint's (shards
            added, removed or resized, as in continual pretraining on grown data).
        initial_checkpoint: a lit checkpoint directory (scripts/convert_hf_checkpoint.py) whose weights
            start the run.
        compile: compile each transformer block with torch.compile.
        activation_checkpointing: recompute each block's activations in the backward pass.
        logger: csv (always written), or also wandb (offline without WANDB_API_KEY) or tensorboard.
        num_workers: DataLoader worker processes per rank for the training data.
        seed: seeds the initialisation and the data order.
        max_nonfinite_steps: abort after this many consecutive steps with a non-finite loss.
    """
    hparams = hyperparameters(**locals())
    strategy = ModelParallelStrategy(parallelize_fn=lambda model, mesh: parallelize(model, mesh, hparams))
    fabric = L.Fabric(
        devices=hparams.devices, num_nodes=num_nodes, strategy=strategy, precision=_fabric_precision(hparams)
    )
    fabric.launch(main, hparams)


def hyperparameters(**arguments: object) -> Hyperparameters:
    """setup()'s arguments with the defaults that depend on nothing else filled in (also for
    scripts/show_batch.py, which reads a recipe as this script does)."""
    arguments["model_config"] = arguments["model_config"] or {}
    arguments["train_data"] = arguments["train_data"] or list(TINYLLAMA_MIXTURE)
    return Hyperparameters(**arguments)


def _jsonable(value: object) -> object:
    return vars(value) if hasattr(value, "__dict__") else str(value)


def best_precision() -> str:
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def _fabric_precision(hparams: Hyperparameters) -> str:
    """bf16-mixed is done by FSDP2's mixed-precision policy (bf16 all-gathers), so Fabric keeps fp32."""
    precision = hparams.precision or best_precision()
    return "32-true" if precision == "bf16-mixed" else precision


def parallelize(model: GPT, mesh: DeviceMesh, hparams: Hyperparameters) -> GPT:
    """fully_shard each Block, then the root: over all devices, or within nodes (hybrid)."""
    if not hparams.hybrid_sharding:
        mesh = init_device_mesh(mesh.device_type, (mesh.size(),))
    mixed = (hparams.precision or best_precision()) == "bf16-mixed"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else None
    kwargs = {"mesh": mesh} | ({"mp_policy": policy} if policy else {})
    for block in model.transformer.h:
        if hparams.compile:
            block.compile()
        fully_shard(block, **kwargs)
    return fully_shard(model, **kwargs)


def main(fabric: L.Fabric, hparams: Hyperparameters) -> None:
    out_dir = hparams.out_dir
    config = Config.from_name(hparams.model_name, **hparams.model_config)
    world = fabric.world_size
    plan = stage_plan(hparams, config, world)
    names = [source.name for source in hparams.train_data]
    train_loader = training_data(hparams, config, plan, fabric.global_rank, world)
    train_sources = train_loader.dataset.sources
    val_loader = None
    if hparams.val_data is not None:
        val_loader = create_loader(
            [data_source(hparams, config, hparams.val_data, hparams.val_prefix)],
            config.block_size,
            hparams.micro_batch_size,
            seed=hparams.seed,
            rank=fabric.global_rank,
            world_size=world,
            epochs=1,
        )
    check_tokenizer(config, hparams, train_sources + (val_loader.dataset.sources if val_loader else []))
    fingerprint = {name: blocks.fingerprint() for name, blocks in zip(names, train_sources, strict=True)}
    resume_from = claim_out_dir(fabric, hparams)
    if fabric.global_rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        fabric.print(f"Model {config.name or hparams.model_name}: {json.dumps(config.to_dict())}")
        fabric.print(f"Kernels: {kernels.describe(fabric.device)}; precision {hparams.precision or best_precision()}")
        fabric.print(
            f"Data: {dict(zip(names, plan.weights(0), strict=True))}; {plan.max_steps:,} steps, "
            f"{plan.max_tokens:,} tokens over {len(plan.stages)} stage(s)"
        )

    fabric.seed_everything(hparams.seed)
    model = GPT(config, activation_checkpointing=hparams.activation_checkpointing)
    if hparams.initial_checkpoint is not None:
        weights = load_model_weights(hparams.initial_checkpoint)
        check_state_dict(weights, config, hparams.initial_checkpoint)
        model.load_state_dict(weights)
    model = fabric.setup(model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=hparams.learning_rate,
        weight_decay=hparams.weight_decay,
        betas=(hparams.beta1, hparams.beta2),
        foreach=True,
    )
    optimizer = fabric.setup_optimizers(optimizer)

    state = {
        "model": model,
        "optimizer": optimizer,
        "step": 0,
        "tokens": 0,
        "skipped_steps": 0,
        "data": None,
        "rng": torch.get_rng_state(),
    }
    if resume_from is not None:
        check_same_data(resume_from, fingerprint, hparams.allow_data_change, fabric)
        fabric.load(resume_from, state)
        train_loader.load_state_dict(state["data"])
        if state["data"]["step"] != state["step"]:
            raise ValueError(
                f"{resume_from}: its data position is at step {state['data']['step']}, not {state['step']}"
            )
        torch.set_rng_state(state["rng"])
        fabric.print(f"Resumed from {resume_from} at step {state['step']:,} ({state['tokens']:,} tokens)")
        if state["step"] >= plan.max_steps:
            fabric.print(
                f"The run in {out_dir} is finished: step {state['step']:,} of {plan.max_steps:,}. To train further, "
                "raise --max_steps or --max_tokens (or add a stage) and resume; the learning-rate schedule then "
                "follows the new length."
            )
            return

    metrics = None
    if fabric.global_rank == 0:
        run_config = json.loads(json.dumps(vars(hparams), default=_jsonable))
        metrics = MetricsLogger(out_dir, hparams.logger, state["step"], run_config)
    train(fabric, hparams, config, plan, model, optimizer, train_loader, val_loader, state, metrics, fingerprint)
    if metrics is not None:
        metrics.close()


def data_source(hparams: Hyperparameters, config: Config, path: Path, prefix: str) -> ShardedBlocks:
    return ShardedBlocks(path, config.block_size, hparams.seed, prefix=prefix, vocab_size=config.vocab_size)


def training_data(hparams: Hyperparameters, config: Config, plan: StagePlan, rank: int, world_size: int) -> BlockLoader:
    """Rank ``rank``'s loader over the run's training sources, with the plan's batch sizes and mixtures."""
    return create_loader(
        [data_source(hparams, config, source.path, source.prefix) for source in hparams.train_data],
        config.block_size,
        hparams.micro_batch_size,
        global_batch_size=plan.global_batch_size,
        weights=plan.mixture,
        seed=hparams.seed,
        rank=rank,
        world_size=world_size,
        num_workers=hparams.num_workers,
    )


def train(
    fabric, hparams, config, plan, model, optimizer, train_loader, val_loader, state, metrics, fingerprint
) -> None:
    world = fabric.world_size
    batches = iter(train_loader)
    throughput = Throughput(config, world, fabric.device)
    throughput.start(state["step"], state["tokens"])
    nonfinite_in_a_row = 0
    while state["step"] < plan.max_steps:
        step = state["step"]
        global_batch = plan.global_batch_size(step)
        accumulation = global_batch // (world * hparams.micro_batch_size)
        lr = cosine_lr(step, hparams.learning_rate, hparams.min_lr, hparams.warmup_steps, plan.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=fabric.device)
        for micro_step in range(accumulation):
            batch = next(batches).to(fabric.device, non_blocking=True)
            with fabric.no_backward_sync(model, enabled=micro_step < accumulation - 1):
                loss = model(batch[:, :-1], targets=batch[:, 1:])
                fabric.backward(loss / accumulation)
            loss_sum += loss.detach()
        loss = fabric.all_reduce(loss_sum / accumulation, reduce_op="mean")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hparams.grad_clip, foreach=True)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            optimizer.step()
            nonfinite_in_a_row = 0
        else:
            state["skipped_steps"] += 1
            nonfinite_in_a_row += 1
            fabric.print(f"Step {step}: non-finite loss {loss.item()} or gradient norm; step skipped")
            if nonfinite_in_a_row >= hparams.max_nonfinite_steps:
                raise RuntimeError(
                    f"{nonfinite_in_a_row} steps in a row had a non-finite loss or gradient norm (last at step "
                    f"{step}); lower the learning rate or resume from an earlier checkpoint"
                )
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += global_batch * config.block_size

        done = state["step"] == plan.max_steps
        if state["step"] % hparams.log_interval == 0 or done:
            speed = throughput.report(state["step"], state["tokens"], plan.max_tokens - state["tokens"])
            row = dict(
                step=state["step"],
                stage=plan.stages[plan.stage_index(step)].name,
                tokens=state["tokens"],
                train_loss=loss.item(),
                lr=lr,
                grad_norm=grad_norm.item(),
                global_batch_size=global_batch,
                skipped_steps=state["skipped_steps"],
                **speed,
            )
            mfu = f"{speed['mfu']:.1%}" if speed["mfu"] is not None else "n/a"
            fabric.print(
                f"step {state['step']:>7,}/{plan.max_steps:,} | loss {row['train_loss']:.4f} | lr {lr:.3e} | "
                f"grad {row['grad_norm']:.3f} | {state['tokens']:,} tok | {speed['tokens_per_s']:,.0f} tok/s "
                f"({speed['tokens_per_s_per_device']:,.0f}/device) | MFU {mfu} | "
                f"{speed['step_time_s'] * 1000:.0f} ms/step | ETA {format_eta(speed['eta_s'])}"
            )
            if metrics is not None:
                metrics.log(row)
        if val_loader is not None and (state["step"] % hparams.eval_interval == 0 or done):
            val_loss = validate(fabric, model, val_loader, hparams.eval_iters)
            fabric.print(
                f"step {state['step']:>7,} | validation loss {val_loss:.4f} | perplexity {math.exp(val_loss):.2f}"
            )
            if metrics is not None:
                metrics.log(
                    dict(step=state["step"], tokens=state["tokens"], val_loss=val_loss, val_ppl=math.exp(val_loss))
                )
            throughput.start(state["step"], state["tokens"])  # validation is not training time
        if state["step"] % hparams.save_interval == 0 or done:
            save(fabric, hparams, config, state, train_loader, fingerprint)
            throughput.start(state["step"], state["tokens"])  # nor is saving


@torch.no_grad()
def validate(fabric: L.Fabric, model: torch.nn.Module, loader: BlockLoader, eval_iters: int) -> float:
    """Mean loss over the first ``eval_iters`` validation micro-batches per rank: the same every time.

    A rank with fewer validation blocks than its share runs padding batches with weight zero, since
    every rank must take part in each sharded forward pass.
    """
    model.eval()
    loader.reset()
    batches = [batch for _, batch in zip(range(eval_iters), loader, strict=False)]
    block_tokens = batches[0].shape[1] if batches else loader.dataset.block_tokens
    rounds = int(fabric.all_reduce(torch.tensor(len(batches), device=fabric.device), reduce_op="max").item())
    total = torch.zeros(2, device=fabric.device, dtype=torch.float64)  # summed loss x tokens, tokens
    for i in range(rounds):
        real = i < len(batches)
        batch = (batches[i] if real else torch.zeros(1, block_tokens, dtype=torch.long)).to(fabric.device)
        loss = model(batch[:, :-1], targets=batch[:, 1:])
        tokens = batch[:, 1:].numel() if real else 0
        total += torch.stack([loss.double() * tokens, torch.tensor(tokens, device=fabric.device, dtype=torch.float64)])
    total = fabric.all_reduce(total, reduce_op="sum")
    model.train()
    return (total[0] / total[1]).item()


def save(
    fabric: L.Fabric,
    hparams: Hyperparameters,
    config: Config,
    state: dict,
    train_loader: BlockLoader,
    fingerprint: dict[str, Fingerprint],
) -> None:
    state["data"] = train_loader.state_dict()  # global counters: the same on every rank
    state["rng"] = torch.get_rng_state()
    files = {
        "model_config.json": config.to_dict(),
        "hyperparameters.json": json.loads(json.dumps(vars(hparams), default=_jsonable)),
        DATA_FINGERPRINT: {name: print_.to_dict() for name, print_ in fingerprint.items()},
    }
    copies = {"tokenizer.model": Tokenizer(hparams.tokenizer_path).path} if hparams.tokenizer_path else {}
    path = save_training_state(fabric, hparams.out_dir, state["step"], state, files, hparams.keep_checkpoints, copies)
    fabric.print(f"Saved {path}")


def stage_plan(hparams: Hyperparameters, config: Config, world_size: int) -> StagePlan:
    """The run's stages (one for a run given by max_tokens or max_steps), with batch sizes checked."""
    stages = hparams.stages
    if stages is None:
        if (hparams.max_tokens is None) == (hparams.max_steps is None):
            raise ValueError("Give exactly one of --max_tokens and --max_steps (or --stages)")
        tokens = hparams.max_tokens or hparams.max_steps * hparams.global_batch_size * config.block_size
        stages = [Stage("pretraining", tokens=tokens)]
    weights = {source.name: source.weight for source in hparams.train_data}
    plan = StagePlan(stages, weights, hparams.global_batch_size, config.block_size)
    per_step = world_size * hparams.micro_batch_size
    for stage, batch in zip(plan.stages, plan.batch_sizes, strict=True):
        if batch % per_step:
            raise ValueError(
                f"Stage {stage.name!r}: global batch size {batch} is not a multiple of world size {world_size} x "
                f"micro-batch size {hparams.micro_batch_size} = {per_step}"
            )
    return plan


def check_tokenizer(config: Config, hparams: Hyperparameters, sources: list[ShardedBlocks]) -> None:
    """The tokenizer fits the model, and the shards (where their index says) were made with it."""
    if hparams.tokenizer_path is None:
        return
    tokenizer = Tokenizer(hparams.tokenizer_path)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"Tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but model {hparams.model_name} only "
            f"{config.vocab_size}; set --model_config.vocab_size or use another tokenizer"
        )
    digest = file_sha256(tokenizer.path)
    for source in sources:
        if source.tokenizer_digests - {digest}:
            raise ValueError(
                f"The index of {source.directory} records shards made with another tokenizer than {tokenizer.path}"
            )


def claim_out_dir(fabric: L.Fabric, hparams: Hyperparameters) -> Path | None:
    """The checkpoint to resume from, after making sure that a new run does not mix with an old one in
    ``out_dir``: a new run there is refused unless ``--overwrite true`` removes the old one."""
    if hparams.overwrite and hparams.resume is not False:
        raise ValueError("--overwrite true starts a new run: give it with --resume false")
    existing = complete_checkpoints(hparams.out_dir)
    if hparams.resume is not False or not existing:
        return resume_checkpoint(hparams.resume, hparams.out_dir)
    if not hparams.overwrite:
        raise ValueError(
            f"{hparams.out_dir} holds another run (newest checkpoint {existing[-1].name}); continue it with "
            "--resume auto, start the new run in another --out_dir, or delete the old run with --overwrite true"
        )
    fabric.barrier()
    if fabric.global_rank == 0:
        removed = remove_run(hparams.out_dir)
        fabric.print(f"--overwrite: removed the previous run's {', '.join(removed)} from {hparams.out_dir}")
    fabric.barrier()
    return None


def check_same_data(
    checkpoint: Path, fingerprint: dict[str, Fingerprint], allow_change: bool, fabric: L.Fabric
) -> None:
    """Refuse to resume on training data other than the checkpoint's, saying what changed."""
    path = checkpoint / DATA_FINGERPRINT
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {DATA_FINGERPRINT}: it was written by an older version")
    recorded = json.loads(path.read_text())
    if sorted(recorded) != sorted(fingerprint):
        raise ValueError(
            f"{checkpoint} was trained on the sources {sorted(recorded)}, this run names {sorted(fingerprint)}"
        )
    for name, current in fingerprint.items():
        change = current.changes_since(Fingerprint.from_dict(recorded[name]))
        if change is None:
            continue
        message = f"Training source {name!r} changed since {checkpoint}: {change}"
        if not allow_change:
            raise ValueError(f"{message}. Pass --allow_data_change true if this is meant.")
        fabric.print(f"{message}; resuming anyway (--allow_data_change true)")


if __name__ == "__main__":
    from jsonargparse import CLI

    torch.set_float32_matmul_precision("high")
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach log files (SLURM, nohup) at once
    CLI(setup, as_positional=False)
    sys.exit(0)
