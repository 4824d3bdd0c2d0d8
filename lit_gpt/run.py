"""The run configuration: every setting of a pretraining run, typed, in one frozen dataclass.

``pretrain/tinyllama.py`` builds it once from the command line or a recipe (``--config``, YAML in
``pretrain/configs``) and hands it to the pieces; ``scripts/show_batch.py`` reads a recipe the same
way. What follows from the settings alone -- the model config, the stage plan with its batch sizes
checked -- is derived here, so that every reader derives it alike; the loaders it asks for are made by
``lit_gpt.data.run_loaders``. It imports no torch, so that ``--help`` and a mistaken option are answered
before the training script loads torch and Lightning.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_gpt.config import Checkpointing, Config
from lit_gpt.errors import InvalidInput, MissingInput
from lit_gpt.schedule import DecayShape, LearningRate, Stage, StagePlan
from lit_gpt.spikes import SpikeGuard
from lit_gpt.tokenizer import Boundary, load_tokenizer

Precision = Literal["bf16-mixed", "bf16-true", "32-true"]


@dataclass(frozen=True)
class DataSource:
    """A dataset directory of packed shards, its name (for stage mixtures) and its default weight.

    ``prefix`` selects the shards whose names start with it, for a directory that holds several sources
    (the original TinyLlama scripts write ``train_slimpajama*``, ``train_starcoder*`` and ``validation_*``
    into one folder).
    """

    name: str
    path: Path
    weight: float = 1.0
    prefix: str = ""


TINYLLAMA_MIXTURE = (
    DataSource("slimpajama", Path("data/slimpajama/train"), 0.693584),
    DataSource("starcoder", Path("data/starcoder/train"), 0.306416),
)


@dataclass(frozen=True)
class RunConfig:
    """Pretrain a Llama-architecture model on packed shards.

    Args:
        model_name: a named config (lit_gpt.config), e.g. tiny_LLaMA_1b, tiny_LLaMA_120M, tiny_LLaMA_5M.
        model_config: fields of the config to override, e.g. ``{n_layer: 2}``.
        train_data: dataset directories with names and mixture weights; default SlimPajama 0.693584,
            StarCoder 0.306416 (data/slimpajama/train, data/starcoder/train).
        val_data: a dataset directory for validation; or several, with names and weights (each gets its
            own loss, and val_loss is their weighted mean), e.g. SlimPajama's and StarCoder's validation
            sets; or null for none.
        val_prefix: with one val_data directory, read only the shards whose names start with this
            (e.g. ``validation_``); several directories take a ``prefix`` each.
        tokenizer_path: the tokenizer the shards were made with; checked against the model and the
            shards' index, and copied into checkpoints for conversion.
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
        lr_schedule: after warmup, cosine or linear decay to min_lr over the whole run, or wsd
            (warmup-stable-decay): max learning rate until the decay at the end of the run.
        lr_decay_fraction: with wsd, the share of the steps spent decaying (unless a stage says
            ``lr_decay: true`` where its decay begins, as a cooldown does).
        lr_decay_shape: with wsd, the decay's shape: linear, cosine or 1-sqrt.
        lr_batch_scaling: sqrt multiplies the learning rate by sqrt(batch size / the first stage's) in
            stages that change the batch size; none leaves it.
        weight_decay: AdamW weight decay.
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: maximum global gradient norm.
        z_loss: coefficient of the z-loss, z_loss x logsumexp(logits)^2, added to the training loss to keep
            the output softmax normalised (PaLM, OLMo use 1e-4); 0 turns it off.
        spike_guard: skip the update of a step whose loss or gradient norm is more than spike_sigma
            standard deviations above the mean of the last spike_window steps (once that many steps of
            the stage have been taken); the step's batch is not retried.
        spike_window: steps in the spike guard's rolling window.
        spike_sigma: how many standard deviations above the window's mean make a spike.
        log_interval: optimizer steps between console/metrics lines.
        eval_interval: optimizer steps between validations.
        eval_blocks: sequences of each validation set scored at each validation: the first eval_blocks
            of the set's order (or all of a smaller set), split across ranks, so that val_loss means the
            same on any number of devices and any micro-batch size. The default is TinyLlama's 100
            micro-batches of 8 on each of 16 GPUs.
        eval_tasks: benchmarks of the Language Model Evaluation Harness (pip install -e '.[eval]') to run
            during training, e.g. [hellaswag, piqa]; ranked-choice accuracy (acc, acc_norm) is logged as
            eval/<task>/<metric>. Needs tokenizer_path.
        eval_tasks_interval: optimizer steps between benchmark evaluations (one is also run at the end).
        eval_tasks_limit: examples per task in each evaluation (null: all), to keep it cheap.
        eval_tasks_include_path: a folder of task definitions and data of your own (offline machines).
        save_interval: optimizer steps between checkpoints (one is also written at the end).
        save_initial: also write the checkpoint of step 0, before any update.
        async_checkpoint: write checkpoints in the background: training waits only for a copy of its
            state in CPU memory; a checkpoint still appears complete or not at all.
        keep_checkpoints: how many of the newest checkpoints to keep.
        resume: "auto" continues from the newest complete checkpoint in out_dir if there is one; a path
            resumes from that checkpoint (on any number of devices); false starts a new run, which an
            out_dir holding checkpoints refuses unless overwrite is true.
        overwrite: with resume false, delete the checkpoints and metrics of the run already in out_dir.
        allow_data_change: resume even though the training shards differ from the checkpoint's (shards
            added, removed or resized, as in continual pretraining on grown data).
        initial_checkpoint: a lit checkpoint directory (scripts/convert_hf_checkpoint.py) whose weights
            start the run.
        document_mask: attend only within each document (documents are cut at the boundary token of the
            tokenizer at tokenizer_path, its BOS before each document or its EOS after each; the part of a
            document that began in an earlier block is a segment of its own), as Llama 3 and OLMo 2
            train; false: causal attention across the packed documents, as TinyLlama trained. Training
            only: validation, benchmarks and the converted model score single texts and are unaffected.
            Rotary positions are not restarted at each document: RoPE depends on distances between
            positions only, so that would change rounding, nothing else.
        compile: compile each transformer block and the training loss with torch.compile.
        activation_checkpointing: none; full: recompute every block's activations in the backward pass
            instead of keeping them (least memory, about a third more compute); selective: every other
            block (half of each).
        reshard_after_forward: FSDP2 frees each block's gathered weights after its forward pass and
            gathers them again for the backward pass (less memory); false keeps them (one all-gather
            per block and step fewer: faster where memory allows).
        logger: csv (always written), or also wandb (offline without WANDB_API_KEY) or tensorboard.
        num_workers: DataLoader worker processes per rank for the training data.
        seed: seeds the initialisation and the data order.
        max_nonfinite_steps: abort after this many consecutive steps with a non-finite loss.
        max_restarts_without_progress: refuse to start after this many restarts in a row (by torchrun
            --max-restarts or a SLURM requeue) from the same checkpoint, each of which failed before
            writing a newer one: the failure repeats, so restarting again only burns the allocation.
        startup_timeout: seconds a collective may wait during start-up and the first step (loading the
            index and the checkpoint from a busy filesystem, compiling), before the job stops.
        collective_timeout: seconds a collective may wait after the first step; a rank that stops or
            hangs makes the others exit with status 3 after this long, naming the step.
        dry_run: print the plan of the run (settings, stages with their steps, tokens, batch split and
            mixture, learning-rate landmarks, epochs of each source, validation and checkpoint cadence,
            checkpoint disk) and stop: no process group, nothing written.
    """

    model_name: str = "tiny_LLaMA_1b"
    model_config: dict[str, Any] = field(default_factory=dict)
    train_data: list[DataSource] = field(default_factory=lambda: list(TINYLLAMA_MIXTURE))
    val_data: Path | list[DataSource] | None = Path("data/slimpajama/validation")
    val_prefix: str = ""
    tokenizer_path: Path | None = None
    out_dir: Path = Path("out/tinyllama")
    devices: int | str = "auto"
    num_nodes: int = 1
    precision: Precision | None = None
    hybrid_sharding: bool = False
    global_batch_size: int = 1024
    micro_batch_size: int = 8
    max_tokens: int | None = None
    max_steps: int | None = None
    stages: list[Stage] | None = None
    learning_rate: float = 4e-4
    min_lr: float = 4e-5
    warmup_steps: int = 2000
    lr_schedule: Literal["cosine", "linear", "wsd"] = "cosine"
    lr_decay_fraction: float = 0.2
    lr_decay_shape: DecayShape = "1-sqrt"
    lr_batch_scaling: Literal["none", "sqrt"] = "none"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    z_loss: float = 0.0
    spike_guard: bool = True
    spike_window: int = 128
    spike_sigma: float = 6.0
    log_interval: int = 10
    eval_interval: int = 1000
    eval_blocks: int = 12_800
    eval_tasks: list[str] | None = None
    eval_tasks_interval: int = 5000
    eval_tasks_limit: int | None = 500
    eval_tasks_include_path: Path | None = None
    save_interval: int = 1000
    save_initial: bool = False
    async_checkpoint: bool = False
    keep_checkpoints: int = 3
    resume: bool | Literal["auto"] | Path = "auto"
    overwrite: bool = False
    allow_data_change: bool = False
    initial_checkpoint: Path | None = None
    document_mask: bool = False
    compile: bool = False
    activation_checkpointing: Checkpointing = "none"
    reshard_after_forward: bool = True
    logger: Literal["csv", "wandb", "tensorboard"] = "csv"
    num_workers: int = 2
    seed: int = 42
    max_nonfinite_steps: int = 10
    max_restarts_without_progress: int = 3
    startup_timeout: float = 600.0
    collective_timeout: float = 300.0
    dry_run: bool = False

    @classmethod
    def from_recipe(cls, path: Path, *overrides: str) -> RunConfig:
        """A recipe file (and command-line style ``overrides``) read as ``pretrain/tinyllama.py`` reads it."""
        from lit_gpt.cli import parse_dataclass

        if not Path(path).is_file():
            raise MissingInput(f"{path}: no such recipe file (pretrain/configs/ holds the shipped ones)")
        return parse_dataclass(cls, ["--config", str(path), *overrides])

    def model(self) -> Config:
        return Config.from_name(self.model_name, **self.model_config)

    def learning_rates(self) -> LearningRate:
        return LearningRate(
            self.learning_rate,
            self.min_lr,
            self.warmup_steps,
            self.lr_schedule,
            self.lr_decay_fraction,
            self.lr_decay_shape,
            self.lr_batch_scaling,
        )

    def spikes(self) -> SpikeGuard:
        """The loss-spike guard the settings ask for (switched off, it still keeps its window)."""
        if self.spike_window < 2 or not self.spike_sigma > 0:
            raise InvalidInput(
                f"--spike_window must be at least 2 and --spike_sigma positive, not {self.spike_window} and "
                f"{self.spike_sigma}"
            )
        return SpikeGuard(self.spike_window, self.spike_sigma, enabled=self.spike_guard)

    def document_boundary(self) -> Boundary | None:
        """Where documents are cut, for ``--document_mask``: the tokenizer's boundary token (BOS before each
        document, or EOS after it; None without the mask)."""
        if not self.document_mask:
            return None
        if self.tokenizer_path is None:
            raise InvalidInput("--document_mask true needs --tokenizer_path: documents are cut at its boundary token")
        return load_tokenizer(self.tokenizer_path).boundary

    def resolved_precision(self) -> Precision:
        """The precision asked for, or the best the machine has: bf16-mixed on GPUs that support it."""
        import torch

        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return self.precision or ("bf16-mixed" if bf16 else "32-true")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values, for hyperparameters.json and the loggers."""
        return json.loads(json.dumps(asdict(self), default=str))

    def stage_plan(self, config: Config, world_size: int) -> StagePlan:
        """The run's stages (one for a run given by max_tokens or max_steps), with batch sizes checked."""
        stages = self.stages
        if stages is None:
            if (self.max_tokens is None) == (self.max_steps is None):
                raise InvalidInput("Give exactly one of --max_tokens and --max_steps (or --stages)")
            tokens = self.max_tokens or self.max_steps * self.global_batch_size * config.block_size
            stages = [Stage("pretraining", tokens=tokens)]
        weights = {source.name: source.weight for source in self.train_data}
        plan = StagePlan(stages, weights, self.global_batch_size, config.block_size)
        per_step = world_size * self.micro_batch_size
        for stage, batch in zip(plan.stages, plan.batch_sizes, strict=True):
            if batch % per_step:
                raise InvalidInput(
                    f"Stage {stage.name!r}: global batch size {batch} is not a multiple of world size {world_size} "
                    f"x micro-batch size {self.micro_batch_size} = {per_step}"
                )
        return plan

    def validation_sets(self) -> list[DataSource]:
        """The validation directories with their names and weights (one named "validation" for a path)."""
        if self.val_data is None:
            return []
        if isinstance(self.val_data, Path):
            return [DataSource("validation", self.val_data, 1.0, self.val_prefix)]
        names = [source.name for source in self.val_data]
        if len(set(names)) != len(names) or not names:
            raise InvalidInput(f"--val_data needs distinct names, one per directory; got {names}")
        return list(self.val_data)
