"""Learning-rate, data-mixture and batch-size schedules: pure functions of the step or of tokens seen.

A run is a list of stages (TinyLlama v1.1: basic pretraining, continual pretraining with a domain
mixture that ramps in, cooldown with a larger batch). A stage has a token budget, a global batch size
and a mixture; the learning rate follows one warmup + cosine curve across all stages. Tokens count
trained positions: ``sequences x block_size``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lit_gpt.errors import InvalidInput

DecayShape = Literal["linear", "cosine", "1-sqrt"]


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to ``max_lr`` over ``warmup_steps`` steps, then cosine decay to ``min_lr``.

    Step 0 already trains (lr = max_lr / warmup_steps), the last warmup step uses ``max_lr`` and the
    last step, ``max_steps - 1``, uses exactly ``min_lr``.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    decay_steps = max(max_steps - 1 - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def decay_factor(progress: float, shape: DecayShape) -> float:
    """From 1 at the start of a decay (progress 0) to 0 at its end (progress 1)."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - math.sqrt(progress)


@dataclass(frozen=True)
class LearningRate:
    """The learning rate of every step: linear warmup to ``max_lr``, then

    - ``cosine`` / ``linear``: a decay over the rest of the run to ``min_lr`` at its last step;
    - ``wsd`` (warmup-stable-decay): ``max_lr`` until the decay, which spans the last ``decay_fraction``
      of the steps (or starts with the first stage marked ``lr_decay``) and reaches ``min_lr`` at the last
      step with ``decay_shape``. Raising the run's length during the stable phase moves only the decay, so
      a resumed, extended run continues at the same learning rate without warming up again.

    ``batch_scaling="sqrt"`` multiplies the rate by sqrt(batch size / the first stage's batch size) in
    stages that change the batch size.
    """

    max_lr: float
    min_lr: float
    warmup_steps: int
    schedule: Literal["cosine", "linear", "wsd"] = "cosine"
    decay_fraction: float = 0.2
    decay_shape: DecayShape = "1-sqrt"
    batch_scaling: Literal["none", "sqrt"] = "none"

    def __post_init__(self) -> None:
        if not 0 < self.decay_fraction <= 1:
            raise InvalidInput(f"lr_decay_fraction must be in (0, 1], got {self.decay_fraction}")

    def decay_start(self, plan: StagePlan) -> int:
        """The first step of the WSD decay."""
        marked = [start for stage, start in zip(plan.stages, plan.start_steps, strict=False) if stage.lr_decay]
        start = marked[0] if marked else plan.max_steps - max(round(self.decay_fraction * plan.max_steps), 1)
        return max(start, self.warmup_steps)

    def warmup_warning(self, plan: StagePlan) -> str | None:
        """What a run that ends inside its warmup should be told at its start (nothing otherwise)."""
        if self.warmup_steps < plan.max_steps:
            return None
        last = self.at(plan.max_steps - 1, plan)
        return (
            f"--warmup_steps {self.warmup_steps:,} is not shorter than the run's {plan.max_steps:,} steps: the "
            f"learning rate rises to {last:.3e} at the last step, never reaches --learning_rate {self.max_lr:g} "
            "and never decays; lower --warmup_steps (or raise --max_steps)"
        )

    def at(self, step: int, plan: StagePlan) -> float:
        scale = 1.0
        if self.batch_scaling == "sqrt":
            scale = math.sqrt(plan.global_batch_size(step) / plan.batch_sizes[0])
        if self.schedule == "cosine":
            return scale * cosine_lr(step, self.max_lr, self.min_lr, self.warmup_steps, plan.max_steps)
        if step < self.warmup_steps:
            return scale * self.max_lr * (step + 1) / self.warmup_steps
        if self.schedule == "linear":
            progress = (step - self.warmup_steps) / max(plan.max_steps - 1 - self.warmup_steps, 1)
            factor = decay_factor(min(progress, 1.0), "linear")
        else:
            start = self.decay_start(plan)
            progress = (step - start + 1) / max(plan.max_steps - start, 1) if step >= start else 0.0
            factor = decay_factor(min(progress, 1.0), self.decay_shape)
        return scale * (self.min_lr + (self.max_lr - self.min_lr) * factor)


@dataclass
class Stage:
    """One stage of a run.

    Args:
        name: shown in logs.
        tokens: the stage's token budget (rounded up to whole steps).
        global_batch_size: sequences per optimizer step; default: the run's.
        weights: mixture as {source name: weight}; default: the run's source weights.
        ramp_from: a mixture to move away from linearly over the first ``ramp_tokens`` of the stage.
        ramp_tokens: length of that ramp.
        lr_decay: with the wsd learning-rate schedule, the decay to min_lr begins with this stage (a
            cooldown), instead of over the run's last lr_decay_fraction of steps.
    """

    name: str
    tokens: int
    global_batch_size: int | None = None
    weights: dict[str, float] | None = None
    ramp_from: dict[str, float] | None = None
    ramp_tokens: int = 0
    lr_decay: bool = False


class StagePlan:
    """Where each stage starts, in steps and in tokens, and what it asks for at any point."""

    def __init__(self, stages: list[Stage], sources: dict[str, float], global_batch_size: int, block_size: int) -> None:
        if not stages:
            raise InvalidInput("A run needs at least one stage")
        self.sources = list(sources)
        self.block_size = block_size
        self.stages, self.batch_sizes, self.mixtures = stages, [], []
        self.start_steps, self.start_tokens = [0], [0]
        for stage in stages:
            batch = stage.global_batch_size or global_batch_size
            if stage.tokens <= 0 or batch <= 0:
                raise InvalidInput(f"Stage {stage.name!r} needs a positive token budget and batch size")
            for mixture in (stage.weights, stage.ramp_from):
                unknown = set(mixture or {}) - set(sources)
                if unknown:
                    raise InvalidInput(f"Stage {stage.name!r} names unknown data sources {sorted(unknown)}")
            steps = math.ceil(stage.tokens / (batch * block_size))
            self.batch_sizes.append(batch)
            self.mixtures.append(self._vector(stage.weights or sources))
            self.start_steps.append(self.start_steps[-1] + steps)
            self.start_tokens.append(self.start_tokens[-1] + steps * batch * block_size)

    def _vector(self, mixture: dict[str, float]) -> list[float]:
        return [float(mixture.get(name, 0.0)) for name in self.sources]

    @property
    def max_steps(self) -> int:
        return self.start_steps[-1]

    @property
    def max_tokens(self) -> int:
        return self.start_tokens[-1]

    def stage_index(self, step: int) -> int:
        return min(bisect.bisect_right(self.start_steps, step) - 1, len(self.stages) - 1)

    def global_batch_size(self, step: int) -> int:
        return self.batch_sizes[self.stage_index(step)]

    def tokens_before(self, step: int) -> int:
        """Tokens trained before ``step`` starts."""
        index = self.stage_index(step)
        return self.start_tokens[index] + (step - self.start_steps[index]) * self.batch_sizes[index] * self.block_size

    def positions_before(self, step: int) -> int:
        """Sequences (positions of the data stream) trained before ``step`` starts."""
        return self.tokens_before(step) // self.block_size

    def mixture(self, tokens: np.ndarray) -> np.ndarray:
        """The mixture after each of ``tokens`` tokens: one row per entry, one weight per source in
        declaration order (vectorised, for the loader's draws)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        index = np.clip(np.searchsorted(self.start_tokens, tokens, side="right") - 1, 0, len(self.stages) - 1)
        target = np.array(self.mixtures)[index]
        start = np.array([self._vector(stage.ramp_from or {}) for stage in self.stages])[index]
        ramp = np.array([stage.ramp_tokens if stage.ramp_from is not None else 0 for stage in self.stages])[index]
        into_stage = tokens - np.array(self.start_tokens)[index]
        fraction = np.where(into_stage < ramp, into_stage / np.maximum(ramp, 1), 1.0)[:, None]
        return start + (target - start) * fraction

    def weights(self, tokens: int) -> list[float]:
        """The mixture after ``tokens`` tokens, one weight per source in declaration order."""
        return self.mixture(np.array([tokens]))[0].tolist()
