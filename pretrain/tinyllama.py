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

import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lit_gpt import GPT, Config, Tokenizer, kernels
from lit_gpt.checkpoint import (
    CheckpointWriter,
    check_writable,
    checkpoint_name,
    complete_checkpoints,
    load_model_weights,
    load_training_state,
    remove_run,
    resume_checkpoint,
)
from lit_gpt.cli import global_rank
from lit_gpt.cli import run as run_command
from lit_gpt.data.loader import BlockLoader
from lit_gpt.errors import InvalidInput, MissingInput
from lit_gpt.hub import go_offline_without_hub
from lit_gpt.model import check_state_dict
from lit_gpt.monitor import MetricLogger, SourceTokens, Throughput, create_loggers, format_eta
from lit_gpt.preemption import EARLY, StopRequest, exit_status, requeue, slurm_job
from lit_gpt.rank_zero import computed_on_rank_0
from lit_gpt.run import RunConfig
from lit_gpt.schedule import StagePlan
from lit_gpt.spikes import SpikeGuard
from lit_gpt.watchdog import (
    TIMEOUT_STATUS,
    count_start,
    is_collective_timeout,
    relaunched,
    reset_restarts,
    set_collective_timeout,
)


def setup(run: RunConfig) -> None:
    """Start Fabric (launching the processes unless torchrun or SLURM did) and run ``main`` on each."""
    stop = StopRequest()
    stop.install(EARLY)  # SLURM's USR1 during the start-up stops the run after its first step (lit_gpt.preemption)
    run = replace(run, precision=run.resolved_precision(), devices=devices_per_node(run.devices))
    check_launch(run)
    check_inputs(run)
    check_writable(run.out_dir)
    if "SLURM_JOB_ID" not in os.environ:  # Lightning's hint to launch with srun means something in a SLURM job only
        warnings.filterwarnings("ignore", message="The `srun` command is available")
    if global_rank() != 0:  # every rank sees the same data and settings: rank 0 speaks for all
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)  # "Initializing distributed", "Seed set"
    strategy = ModelParallelStrategy(
        parallelize_fn=lambda model, mesh: parallelize(model, mesh, run), timeout=timedelta(seconds=run.startup_timeout)
    )
    # bf16-mixed is done by FSDP2's mixed-precision policy (bf16 all-gathers), so Fabric keeps fp32.
    precision = "32-true" if run.precision == "bf16-mixed" else run.precision
    fabric = L.Fabric(devices=run.devices, num_nodes=run.num_nodes, strategy=strategy, precision=precision)
    fabric.launch(main, run, stop)


def devices_per_node(devices: int | str) -> int | str:
    """``devices``, checked against the processes per node that torchrun started, if it did ("auto"
    takes that number, so that a CPU run under torchrun needs no --devices)."""
    launched = os.environ.get("LOCAL_WORLD_SIZE")
    if launched is None:
        return devices
    if devices not in ("auto", int(launched)):
        raise InvalidInput(f"--devices {devices}, but torchrun started {launched} processes per node; make them agree")
    return int(launched)


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
        Tokenizer(run.tokenizer_path)
    run.document_bos_id()
    run.stage_plan(run.model(), launched_world_size(run))


def launched_world_size(run: RunConfig) -> int:
    """The number of processes this launch will have: torchrun's or srun's, else devices x nodes."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_NTASKS" in os.environ and "SLURM_STEP_ID" in os.environ:
        return int(os.environ["SLURM_NTASKS"])
    per_node = run.devices if isinstance(run.devices, int) else max(torch.cuda.device_count(), 1)
    return per_node * run.num_nodes


def check_launch(run: RunConfig) -> None:
    """The nodes that torchrun or srun started agree with ``--num_nodes`` (and, under srun, the tasks per
    node with ``--devices``), refused before any process group is formed."""
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        launched = int(os.environ["WORLD_SIZE"]) // int(os.environ["LOCAL_WORLD_SIZE"])
        launcher = "torchrun"
    elif "SLURM_NTASKS" in os.environ and "SLURM_STEP_ID" in os.environ:  # inside srun
        launched, launcher = int(os.environ.get("SLURM_STEP_NUM_NODES", os.environ.get("SLURM_NNODES", "1"))), "srun"
        tasks = int(os.environ["SLURM_NTASKS"]) // launched
        if run.devices not in ("auto", tasks):
            raise InvalidInput(f"--devices {run.devices}, but srun started {tasks} tasks per node; make them agree")
    else:
        return
    if launched != run.num_nodes:
        raise InvalidInput(
            f"--num_nodes {run.num_nodes}, but {launcher} started processes on {launched} node(s); make them agree"
        )


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


def say(fabric: L.Fabric, message: str) -> None:
    """One voice per job: the console line of global rank 0 (``fabric.print`` speaks once per node)."""
    if fabric.global_rank == 0:
        print(message, flush=True)


def main(fabric: L.Fabric, run: RunConfig, stop: StopRequest) -> None:
    started = time.perf_counter()
    stop.install()  # from here on a signal stops the run at the next step boundary, with a checkpoint
    config = run.model()
    world, rank = fabric.world_size, fabric.global_rank
    plan = run.stage_plan(config, world)
    listings = computed_on_rank_0(fabric, run.listings)  # the directories and indexes: read once per job
    train_loader = run.training_loader(config, plan, rank, world, listings)
    val_loaders = run.validation_loaders(config, rank, world, listings)
    val_sources = [source for loader in val_loaders.values() for source in loader.dataset.sources]
    run.check_tokenizer(config, train_loader.dataset.sources + val_sources)
    benchmarks = task_evaluator(run, config)
    if run.z_loss < 0:
        raise InvalidInput(f"--z_loss must not be negative, not {run.z_loss}")
    guard = run.spikes()
    names = [source.name for source in run.train_data]
    fingerprint = {name: blocks.fingerprint() for name, blocks in zip(names, train_loader.dataset.sources, strict=True)}
    resume_from = claim_out_dir(fabric, run)
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
            f"{plan.max_tokens:,} tokens over {len(plan.stages)} stage(s)",
        )

    fabric.seed_everything(run.seed)
    model = GPT(config, activation_checkpointing=run.activation_checkpointing)
    if run.initial_checkpoint is not None:
        weights = load_model_weights(run.initial_checkpoint)
        check_state_dict(weights, config, run.initial_checkpoint)
        model.load_state_dict(weights)
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
    batches = iter(train_loader)
    schedule = run.learning_rates()
    throughput = Throughput(config, fabric.world_size, fabric.device)
    throughput.start(state["step"], plan.tokens_before(state["step"]))
    names = [source.name for source in run.train_data]
    source_tokens = SourceTokens(names, config.block_size, train_loader.state_dict()["taken"])
    bos_id = run.document_bos_id()  # --document_mask
    nonfinite_in_a_row, started, first_step = 0, time.perf_counter(), state["step"]
    while state["step"] < plan.max_steps:
        step = state["step"]
        lr = schedule.at(step, plan)
        accumulation = plan.global_batch_size(step) // (fabric.world_size * run.micro_batch_size)
        if step > 0 and plan.stage_index(step) != plan.stage_index(step - 1):
            guard.reset()  # a new batch size or mixture moves the loss: measure it afresh
        measured = train_step(
            fabric, state, batches, accumulation, lr, run.grad_clip, run.z_loss, guard, stop.flag, bos_id
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
    batches: Iterator[torch.Tensor],
    accumulation: int,
    lr: float,
    grad_clip: float,
    z_loss: float,
    guard: SpikeGuard,
    stop_flag: float = 0.0,
    bos_id: int | None = None,
) -> dict:
    """One optimizer step over ``accumulation`` micro-batches per rank. The update is applied only when
    the loss and the gradient norm are finite and ``guard`` finds no spike. Returns the loss, the z-loss
    term, the gradient norm (averaged and global), the guard's verdict, and whether any rank's
    ``stop_flag`` was set (carried by the loss's all-reduce: no collective of its own). With ``bos_id``
    attention stays inside each document (--document_mask; see ``GPT.forward``)."""
    model, optimizer = state["model"], state["optimizer"]
    for group in optimizer.param_groups:
        group["lr"] = lr
    sums = torch.zeros(2, device=fabric.device)  # loss, z term
    for micro_step in range(accumulation):
        batch = next(batches).to(fabric.device, non_blocking=True)
        with fabric.no_backward_sync(model, enabled=micro_step < accumulation - 1):
            terms = model(batch[:, :-1], targets=batch[:, 1:], z_loss=z_loss, bos_id=bos_id)
            fabric.backward(terms.loss / accumulation)
        sums += torch.stack([terms.loss.detach(), terms.z_term])
    flag = torch.tensor([stop_flag], device=fabric.device)
    loss, z_term, stops = fabric.all_reduce(torch.cat([sums / accumulation, flag]), reduce_op="mean").tolist()
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


@dataclass
class Evaluations:
    """What training measures besides its loss: validation sets (with their weights) and benchmarks."""

    val_loaders: dict[str, BlockLoader]
    weights: dict[str, float]
    benchmarks: Callable[[torch.nn.Module], dict[str, float]] | None

    def run(
        self, fabric: L.Fabric, model: torch.nn.Module, validation: bool, tasks: bool, step: int
    ) -> dict[str, float]:
        """Validation losses (per set and their weighted mean ``val_loss``) and/or benchmark scores."""
        metrics: dict[str, float] = {}
        if validation:
            losses = {name: validate(fabric, model, loader) for name, loader in self.val_loaders.items()}
            total = sum(self.weights.values())
            val_loss = sum(self.weights[name] * loss for name, loss in losses.items()) / total
            metrics |= {"val_loss": val_loss, "val_ppl": math.exp(val_loss)}
            each = ""
            if len(losses) > 1:
                for name, loss in losses.items():
                    metrics |= {f"val/{name}/loss": loss, f"val/{name}/ppl": math.exp(loss)}
                each = "".join(f" | {name} {loss:.4f}" for name, loss in losses.items())
            say(fabric, f"step {step:>7,} | validation loss {val_loss:.4f} | perplexity {math.exp(val_loss):.2f}{each}")
        if tasks:
            scores = self.benchmarks(model)
            metrics |= scores
            say(fabric, f"step {step:>7,} | " + " | ".join(f"{name} {value:.4f}" for name, value in scores.items()))
        return metrics


def task_evaluator(run: RunConfig, config: Config) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """The benchmarks of ``--eval_tasks``, loaded (and their names checked) before training starts."""
    if not run.eval_tasks:
        return None
    if run.tokenizer_path is None:
        raise InvalidInput("--eval_tasks needs --tokenizer_path: the benchmarks are text")
    go_offline_without_hub()
    try:
        from lit_gpt.evaluation import TaskEvaluator
    except ImportError as error:
        raise InvalidInput(f"--eval_tasks needs the harness: pip install -e '.[eval]' ({error})") from None
    return TaskEvaluator(
        run.eval_tasks,
        run.eval_tasks_include_path,
        run.eval_tasks_limit,
        Tokenizer(run.tokenizer_path),
        config.block_size,
        run.micro_batch_size,
    )


@torch.no_grad()
def validate(fabric: L.Fabric, model: torch.nn.Module, loader: BlockLoader) -> float:
    """Mean loss per token over the loader's blocks (the first ``--eval_blocks`` of the validation set,
    split across ranks): the same blocks every time, and the same on any number of ranks.

    A rank with fewer validation blocks than its share runs padding batches with weight zero, since
    every rank must take part in each sharded forward pass.
    """
    model.eval()
    loader.reset()
    batches = list(loader)
    block_tokens = batches[0].shape[1] if batches else loader.dataset.block_tokens
    rounds = int(fabric.all_reduce(torch.tensor(len(batches), device=fabric.device), reduce_op="max").item())
    total = torch.zeros(2, device=fabric.device, dtype=torch.float64)  # summed loss x tokens, tokens
    for i in range(rounds):
        real = i < len(batches)
        batch = (batches[i] if real else torch.zeros(1, block_tokens, dtype=torch.long)).to(fabric.device)
        loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
        tokens = batch[:, 1:].numel() if real else 0
        total += torch.stack([loss.double() * tokens, torch.tensor(tokens, device=fabric.device, dtype=torch.float64)])
    total = fabric.all_reduce(total, reduce_op="sum")
    model.train()
    return (total[0] / total[1]).item()


def claim_out_dir(fabric: L.Fabric, run: RunConfig) -> Path | None:
    """The checkpoint to resume from, after making sure that a new run does not mix with an old one in
    ``out_dir``: a new run there is refused unless ``--overwrite true`` removes the old one."""
    if run.overwrite and run.resume is not False:
        raise InvalidInput("--overwrite true starts a new run: give it with --resume false")
    existing = complete_checkpoints(run.out_dir)
    if run.resume is not False or not existing:
        return resume_checkpoint(run.resume, run.out_dir)
    if not run.overwrite:
        raise InvalidInput(
            f"{run.out_dir} holds another run (newest checkpoint {existing[-1].name}); continue it with "
            "--resume auto, start the new run in another --out_dir, or delete the old run with --overwrite true"
        )
    fabric.barrier()
    if fabric.global_rank == 0:
        removed = remove_run(run.out_dir)
        say(fabric, f"--overwrite: removed the previous run's {', '.join(removed)} from {run.out_dir}")
    fabric.barrier()
    return None


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach log files (SLURM, nohup) at once
    run_command(RunConfig, then=setup)
    sys.exit(0)
