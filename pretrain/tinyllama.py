"""Pretrain a TinyLlama model with Lightning Fabric and FSDP2: one CPU process to many GPU nodes.

    python pretrain/tinyllama.py --config pretrain/configs/tiny_llama_v1.yaml         # one machine
    torchrun --nnodes 2 --nproc_per_node 8 ... pretrain/tinyllama.py --config ...      # a cluster

The settings are one typed ``RunConfig`` (lit_gpt.run; ``--help`` lists them). ``main`` wires the pieces
together: the stage plan, the data loaders, the model sharded per block, AdamW, the checkpoint to resume
from. ``train`` is the loop: per optimizer step one ``train_step`` (``accumulation`` micro-batches per
rank, gradients synchronised on the last one only, global-norm clipping, the spike guard, AdamW at the
scheduled learning rate), then logging, validation, benchmarks and checkpoints at their intervals.
"""

from __future__ import annotations

from lit_gpt.cli import check_command_line, global_rank
from lit_gpt.cli import run as run_command
from lit_gpt.run import RunConfig

if __name__ == "__main__":  # --help and mistaken options answered in a second, before the imports below load
    check_command_line(RunConfig)  # torch and Lightning (seconds; a minute on a busy node)

import logging
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import replace
from datetime import timedelta

import lightning as L
import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lit_gpt import GPT, Config, kernels
from lit_gpt.checkpoint import (
    CheckpointWriter,
    check_writable,
    checkpoint_name,
    load_training_state,
)
from lit_gpt.data.loader import BlockLoader
from lit_gpt.data.run_loaders import check_tokenizer, read_listings, training_loader, validation_loaders
from lit_gpt.dry_run import print_plan
from lit_gpt.errors import InvalidInput, MissingInput
from lit_gpt.launch import Strategy, check_launch, devices_per_node, launched_world_size
from lit_gpt.monitor import MetricLogger, SourceTokens, Throughput, create_loggers, format_eta
from lit_gpt.preemption import EARLY, StopRequest, exit_status, requeue, slurm_job
from lit_gpt.rank_failures import CheckedBatches, quiet_when_another_rank_fails
from lit_gpt.rank_zero import computed_on_rank_0, say
from lit_gpt.run_dir import claim_out_dir, release_locks
from lit_gpt.schedule import StagePlan
from lit_gpt.spikes import SpikeGuard
from lit_gpt.tokenizer import Boundary, load_tokenizer
from lit_gpt.validation import Evaluations, task_evaluator
from lit_gpt.watchdog import (
    TIMEOUT_STATUS,
    count_start,
    is_collective_timeout,
    relaunched,
    reset_restarts,
    set_collective_timeout,
)
from lit_gpt.weights import initial_weights


def setup(run: RunConfig) -> None:
    """Start Fabric (launching the processes unless torchrun or SLURM did) and run ``main`` on each."""
    stop = StopRequest()
    stop.install(EARLY)  # SLURM's USR1 during the start-up stops the run after its first step (lit_gpt.preemption)
    run = replace(run, precision=run.resolved_precision(), devices=devices_per_node(run.devices))
    if run.dry_run:
        return print_plan(run)
    check_launch(run.devices, run.num_nodes)
    check_inputs(run)
    check_writable(run.out_dir)
    if "SLURM_JOB_ID" not in os.environ:  # Lightning's hint to launch with srun means something in a SLURM job only
        warnings.filterwarnings("ignore", message="The `srun` command is available")
    if global_rank() != 0:  # every rank sees the same data and settings: rank 0 speaks for all
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)  # "Initializing distributed", "Seed set"
    strategy = Strategy(
        parallelize_fn=lambda model, mesh: parallelize(model, mesh, run), timeout=timedelta(seconds=run.startup_timeout)
    )
    # bf16-mixed is done by FSDP2's mixed-precision policy (bf16 all-gathers), so Fabric keeps fp32.
    precision = "32-true" if run.precision == "bf16-mixed" else run.precision
    fabric = L.Fabric(devices=run.devices, num_nodes=run.num_nodes, strategy=strategy, precision=precision)
    fabric.launch(quiet_when_another_rank_fails(main), run, stop)


def check_inputs(run: RunConfig) -> None:
    """The mistakes that need no process group, refused within seconds of the command instead of after
    the distributed start-up: a missing data folder or tokenizer, a batch that does not split over the
    processes (the shards themselves are checked by the loaders, on every rank)."""
    for source in [*run.train_data, *run.validation_sets()]:
        if not source.path.is_dir():
            raise MissingInput(
                f"Dataset directory {source.path} does not exist (data source {source.name}); prepare it (README, Data)"
            )
    if run.tokenizer_path is not None:
        load_tokenizer(run.tokenizer_path)
    run.document_boundary()
    run.stage_plan(run.model(), launched_world_size(run.devices, run.num_nodes))


def parallelize(model: GPT, mesh: DeviceMesh, run: RunConfig) -> GPT:
    """fully_shard each Block, then the root: over all devices, or within nodes (hybrid); with --compile,
    each block and the training loss are compiled first."""
    if not run.hybrid_sharding:
        mesh = init_device_mesh(mesh.device_type, (mesh.size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mesh": mesh} | ({"mp_policy": policy} if run.precision == "bf16-mixed" else {})
    if run.compile:
        model.head_loss = torch.compile(kernels.linear_cross_entropy)
    for block in model.transformer.h:
        if run.compile:
            block.compile()
        fully_shard(block, reshard_after_forward=run.reshard_after_forward, **kwargs)
    return fully_shard(model, **kwargs)


def main(fabric: L.Fabric, run: RunConfig, stop: StopRequest) -> None:
    started = time.perf_counter()
    stop.install()  # from here on a signal stops the run at the next step boundary, with a checkpoint
    config = run.model()
    world, rank = fabric.world_size, fabric.global_rank
    plan = run.stage_plan(config, world)
    listings = computed_on_rank_0(fabric, lambda: read_listings(run))  # the directories and indexes: read once per job
    train_loader = training_loader(run, config, plan, rank, world, listings)
    val_loaders = validation_loaders(run, config, rank, world, listings)
    val_sources = [source for loader in val_loaders.values() for source in loader.dataset.sources]
    check_tokenizer(run, config, train_loader.dataset.sources + val_sources)
    benchmarks = task_evaluator(run, config)
    if run.z_loss < 0:
        raise InvalidInput(f"--z_loss must not be negative, not {run.z_loss}")
    guard = run.spikes()
    names = [source.name for source in run.train_data]
    fingerprint = {name: blocks.fingerprint() for name, blocks in zip(names, train_loader.dataset.sources, strict=True)}
    resume_from = claim_out_dir(fabric, run, lambda line: say(fabric, line))
    restarts = run.max_restarts_without_progress
    computed_on_rank_0(fabric, lambda: count_start(run.out_dir, resume_from, restarts, relaunched()))
    if rank == 0:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        say(fabric, f"Model {config.name}: {config.to_dict()}")
        compute_dtype = torch.float32 if run.precision == "32-true" else torch.bfloat16
        chosen = kernels.describe(fabric.device, compute_dtype, run.compile, run.z_loss > 0, run.document_mask)
        say(fabric, f"Kernels: {chosen}; precision {run.precision}")
        say(
            fabric,
            f"Data: {dict(zip(names, plan.weights(0), strict=True))}; {plan.max_steps:,} steps, "
            f"{plan.max_tokens:,} tokens over {len(plan.stages)} stage(s); "
            f"{sum(source.unused_tokens for source in train_loader.dataset.sources):,} tokens at shard ends fill "
            "no block (not read)",
        )
        if (warning := run.learning_rates().warmup_warning(plan)) is not None:
            say(fabric, f"warning: {warning}")

    fabric.seed_everything(run.seed)
    model = GPT(config, activation_checkpointing=run.activation_checkpointing)
    if run.initial_checkpoint is not None:
        model.load_state_dict(initial_weights(run.initial_checkpoint, config))
    model = fabric.setup(model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=run.learning_rate,
        weight_decay=run.weight_decay,
        betas=(run.beta1, run.beta2),
        fused=True,  # one kernel for all parameters, on CUDA and CPU alike
    )
    optimizer = fabric.setup_optimizers(optimizer)

    state = {
        "model": model,
        "optimizer": optimizer,
        "step": 0,
        "skipped_steps": 0,
        "spike_steps": 0,
        "data": train_loader.state_dict(),
        "spike_guard": guard.state_dict(),
    }
    if resume_from is not None:
        for change in load_training_state(fabric, resume_from, state, fingerprint, run.allow_data_change):
            say(fabric, f"{change}; resuming anyway (--allow_data_change true)")
        train_loader.load_state_dict(state["data"])
        guard.load_state_dict(state["spike_guard"])
        step = state["step"]
        say(
            fabric,
            f"Resumed from {resume_from} at step {step:,} ({plan.tokens_before(step):,} tokens) in "
            f"{time.perf_counter() - started:.2f} s (data listings, model, checkpoint)",
        )
        if step >= plan.max_steps:
            say(
                fabric,
                f"The run in {run.out_dir} is finished: step {step:,} of {plan.max_steps:,}. To train further, "
                "raise --max_steps or --max_tokens (or add a stage) and resume; the learning-rate schedule then "
                "follows the new length.",
            )
            return

    loggers = create_loggers(run.out_dir, run.logger, state["step"], run.to_dict()) if rank == 0 else []
    writer = CheckpointWriter(
        fabric,
        run.out_dir,
        config,
        run.to_dict(),
        fingerprint,
        run.tokenizer_path,
        run.keep_checkpoints,
        background=run.async_checkpoint,
    )
    if run.save_initial and resume_from is None:  # not again when resuming from that checkpoint
        save(fabric, writer, state, train_loader, guard)
    evaluations = Evaluations(val_loaders, {s.name: s.weight for s in run.validation_sets()}, benchmarks)
    try:
        stopped = train(fabric, run, config, plan, state, train_loader, evaluations, loggers, writer, guard, stop)
    except RuntimeError as error:
        if not is_collective_timeout(error):
            raise
        print(
            f"rank {rank}: step {state['step'] + 1:,}: a collective operation timed out (--collective_timeout "
            f"{run.collective_timeout:g} s): another rank stopped or hangs; stopping",
            file=sys.stderr,
            flush=True,
        )
        release_locks()
        os._exit(TIMEOUT_STATUS)  # a clean exit would wait for the hung rank in the process group's teardown
    finished = writer.finish()
    if finished is not None:
        say(fabric, f"Saved {finished} (written in {writer.write_seconds:.2f} s)")
    for logger in loggers:
        logger.close()
    if rank == 0:
        reset_restarts(run.out_dir)
    if stopped is not None:
        line = (
            f"Stopped at step {state['step']:,} on {stopped.name}: saved {run.out_dir / checkpoint_name(state['step'])}"
        )
        job = slurm_job()
        if stopped == signal.SIGUSR1 and job is not None and rank == 0:
            line += f"; {requeue(job)}"
        say(fabric, f"{line}; the same command resumes from there (--resume auto)")
        raise SystemExit(exit_status(stopped))


def train(
    fabric: L.Fabric,
    run: RunConfig,
    config: Config,
    plan: StagePlan,
    state: dict,
    train_loader: BlockLoader,
    evaluations: Evaluations,
    loggers: list[MetricLogger],
    writer: CheckpointWriter,
    guard: SpikeGuard,
    stop: StopRequest,
) -> signal.Signals | None:
    """Train to the end of the plan, or to the step after which the ranks agree that a signal came;
    returns that signal (None at the end), the step's checkpoint written."""
    batches = CheckedBatches(train_loader, (run.micro_batch_size, config.block_size + 1))
    schedule = run.learning_rates()
    throughput = Throughput(config, fabric.world_size, fabric.device)
    throughput.start(state["step"], plan.tokens_before(state["step"]))
    names = [source.name for source in run.train_data]
    source_tokens = SourceTokens(names, config.block_size, train_loader.state_dict()["taken"])
    boundary = run.document_boundary()  # --document_mask
    nonfinite_in_a_row, started, first_step = 0, time.perf_counter(), state["step"]
    while state["step"] < plan.max_steps:
        step = state["step"]
        lr = schedule.at(step, plan)
        accumulation = plan.global_batch_size(step) // (fabric.world_size * run.micro_batch_size)
        if step > 0 and plan.stage_index(step) != plan.stage_index(step - 1):
            guard.reset()  # a new batch size or mixture moves the loss: measure it afresh
        measured = train_step(
            fabric, state, batches, accumulation, lr, run.grad_clip, run.z_loss, guard, stop.flag, boundary
        )
        if step == first_step:
            set_collective_timeout(run.collective_timeout)  # start-up and the first step are over
        loss, grad_norm = measured["loss"], measured["grad_norm"]
        if math.isfinite(loss) and math.isfinite(grad_norm):
            nonfinite_in_a_row = 0
            if measured["spike"] is not None:
                state["spike_steps"] += 1
                say(fabric, f"Step {step + 1}: {measured['spike']}; update skipped (loss spike)")
        else:
            state["skipped_steps"] += 1
            nonfinite_in_a_row += 1
            say(fabric, f"Step {step + 1}: non-finite loss {loss} or gradient norm {grad_norm}; step skipped")
            if nonfinite_in_a_row >= run.max_nonfinite_steps:
                raise InvalidInput(
                    f"{nonfinite_in_a_row} steps in a row had a non-finite loss or gradient norm (last at step "
                    f"{step + 1}); lower the learning rate or resume from an earlier checkpoint"
                )
        state["step"] += 1
        stopping = measured.pop("stop")
        if stopping:
            received = stop.received.value if stop.received is not None else 0  # which signal, for every rank
            signum = int(fabric.all_reduce(torch.tensor(received, device=fabric.device), reduce_op="max").item())
            report(fabric, plan, state, throughput, source_tokens, train_loader, loggers, lr=lr, **measured)
            save(fabric, writer, state, train_loader, guard)
            return signal.Signals(signum)
        done = state["step"] == plan.max_steps
        if state["step"] % run.log_interval == 0 or done:
            report(fabric, plan, state, throughput, source_tokens, train_loader, loggers, lr=lr, **measured)
        validation = bool(evaluations.val_loaders) and (state["step"] % run.eval_interval == 0 or done)
        tasks = evaluations.benchmarks is not None and (state["step"] % run.eval_tasks_interval == 0 or done)
        if validation or tasks:
            metrics = evaluations.run(fabric, state["model"], validation, tasks, state["step"])
            for logger in loggers:
                logger.log({"tokens": plan.tokens_before(state["step"])} | metrics, state["step"])
            throughput.start(state["step"], plan.tokens_before(state["step"]))  # evaluation is not training time
        if state["step"] % run.save_interval == 0 or done:
            save(fabric, writer, state, train_loader, guard)
            throughput.start(state["step"], plan.tokens_before(state["step"]))  # nor is saving
        else:
            finished = writer.poll()
            if finished is not None:
                say(fabric, f"Saved {finished} (written in {writer.write_seconds:.2f} s)")
    elapsed = time.perf_counter() - started
    say(fabric, f"Trained steps {first_step + 1:,}-{state['step']:,} in {elapsed:.2f} s (loop time, with saving)")
    return None


def save(fabric: L.Fabric, writer: CheckpointWriter, state: dict, train_loader: BlockLoader, guard: SpikeGuard) -> None:
    """Checkpoint the state after ``state["step"]`` steps (in the background with --async_checkpoint)."""
    state["data"] = train_loader.state_dict()  # global counters: the same on every rank
    state["spike_guard"] = guard.state_dict()
    started = time.perf_counter()
    finished = writer.finish()  # at most one write in flight
    if finished is not None:
        say(fabric, f"Saved {finished} (written in {writer.write_seconds:.2f} s)")
    path = writer.save(state)
    if fabric.global_rank == 0:
        reset_restarts(writer.out_dir)
    paused = time.perf_counter() - started
    if writer.background:
        say(fabric, f"Saving {path} in the background (training paused {paused:.2f} s)")
    else:
        say(fabric, f"Saved {path} (training paused {paused:.2f} s)")


def train_step(
    fabric: L.Fabric,
    state: dict,
    batches: CheckedBatches,
    accumulation: int,
    lr: float,
    grad_clip: float,
    z_loss: float,
    guard: SpikeGuard,
    stop_flag: float = 0.0,
    boundary: Boundary | None = None,
) -> dict:
    """One optimizer step over ``accumulation`` micro-batches per rank. The update is applied only when
        the loss and the gradient norm are finite and ``guard`` finds no spike. Returns the loss, the z-loss
        term, the gradient norm (averaged and global), the guard's verdict, and whether any rank's
        ``stop_flag`` was set (carried by the loss's all-reduce: no collective of its own, which also tells every
    rank of a data error on any rank: ``CheckedBatches``). With ``boundary``
        attention stays inside each document (--document_mask; see ``GPT.forward``)."""
    model, optimizer = state["model"], state["optimizer"]
    for group in optimizer.param_groups:
        group["lr"] = lr
    sums = torch.zeros(2, device=fabric.device)  # loss, z term
    for micro_step in range(accumulation):
        batch = next(batches).to(fabric.device, non_blocking=True)
        with fabric.no_backward_sync(model, enabled=micro_step < accumulation - 1):
            terms = model(batch[:, :-1], targets=batch[:, 1:], z_loss=z_loss, boundary=boundary)
            fabric.backward(terms.loss / accumulation)
        sums += torch.stack([terms.loss.detach(), terms.z_term])
    flags = torch.cat([torch.tensor([stop_flag]), batches.flags(fabric.global_rank, fabric.world_size)])
    reduced = fabric.all_reduce(torch.cat([sums / accumulation, flags.to(fabric.device)]), reduce_op="mean").cpu()
    batches.raise_if_failed(reduced[3:], fabric.global_rank)  # a rank's data error: every rank stops here
    loss, z_term, stops = reduced[:3].tolist()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
    spike = guard.check(loss=loss, grad_norm=grad_norm)
    if math.isfinite(loss) and math.isfinite(grad_norm) and spike is None:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    measured = {"loss": loss, "grad_norm": grad_norm, "spike": spike, "stop": stops > 0}
    return measured | ({"z_loss": z_loss * z_term} if z_loss else {})


def report(
    fabric: L.Fabric,
    plan: StagePlan,
    state: dict,
    throughput: Throughput,
    source_tokens: SourceTokens,
    train_loader: BlockLoader,
    loggers: list[MetricLogger],
    **measured: float,
) -> None:
    """The console line and the metrics of the step just taken."""
    step, tokens = state["step"], plan.tokens_before(state["step"])
    speed = throughput.report(step, tokens, plan.max_tokens - tokens)
    per_source, mixture = source_tokens.report(train_loader.state_dict()["taken"])
    metrics = dict(
        stage=plan.stages[plan.stage_index(step - 1)].name,
        tokens=tokens,
        train_loss=measured["loss"],
        lr=measured["lr"],
        grad_norm=measured["grad_norm"],
        global_batch_size=plan.global_batch_size(step - 1),
        skipped_steps=state["skipped_steps"],
        spike_steps=state["spike_steps"],
        **({"z_loss": measured["z_loss"]} if "z_loss" in measured else {}),
        **per_source,
        **speed,
    )
    mfu = f"{speed['mfu']:.1%}" if speed["mfu"] is not None else "n/a"
    say(
        fabric,
        f"step {step:>7,}/{plan.max_steps:,} | loss {measured['loss']:.4f} | lr {measured['lr']:.3e} | "
        f"grad {measured['grad_norm']:.3f} | {tokens:,} tok | {speed['tokens_per_s']:,.0f} tok/s "
        f"({speed['tokens_per_s_per_device']:,.0f}/device) | MFU {mfu} | "
        f"{speed['step_time_s'] * 1000:.0f} ms/step | ETA {format_eta(speed['eta_s'])}"
        + (f" | mix {mixture}" if mixture else ""),
    )
    for logger in loggers:
        logger.log(metrics, step)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach log files (SLURM, nohup) at once
    run_command(RunConfig, then=setup)
    sys.exit(0)
