"""The training checkpoint's format versions, and the migrations that bring an older one up to date.

A checkpoint's ``meta.pt`` (its counters and positions: everything but the sharded model and optimizer
tensors, whose layout has not changed) records ``format_version``. Checkpoints written before the
version was recorded are recognised by their keys. Loading upgrades the metadata one version at a time
through ``MIGRATIONS``; each step fills in what its version lacked with the values that reproduce what
the older code did, so a resumed run continues as the old code would have. Every format listed here
has a fixture checkpoint in ``tests/fixtures/checkpoints`` that a test resumes.

    version  written by            meta.pt holds
    1        be5e6da .. 28af139    step, tokens, skipped_steps, data, rng
    2        04f4fb7 .. 8dea17f    step, skipped_steps, data
    3        59d87f4 .. a883ed8    step, skipped_steps, spike_steps, data, spike_guard
    4        89f4b83 .. 4fcd366    format_version, code_version, and the loader's split in data
    5        since                 the same; data_fingerprint.json holds per source a digest and totals,
                                   not the shard list (that is in out_dir/data_manifests, once per run)

A change to what a checkpoint holds bumps ``FORMAT_VERSION``, adds the migration from the version
before, and adds a fixture made by the code before the change (``tests/fixtures/checkpoints/make.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_gpt.errors import InvalidInput

FORMAT_VERSION = 5
Metadata = dict[str, Any]


def format_version(meta: Metadata) -> int | None:
    """The format of a checkpoint's metadata; None for one written before formats were kept apart."""
    if "format_version" in meta:
        return int(meta["format_version"])
    if "spike_guard" in meta:
        return 3
    if "rng" in meta and "data" in meta:
        return 1
    if {"step", "skipped_steps", "data"} <= set(meta):
        return 2
    return None


def drop_derived_counters(meta: Metadata) -> Metadata:
    """1 -> 2: the token count follows from the step and the stage plan, and the model draws no random
    numbers in training (no dropout), so neither the count nor the generator's state was needed."""
    return {key: value for key, value in meta.items() if key not in ("tokens", "rng")}


def add_spike_guard(meta: Metadata) -> Metadata:
    """2 -> 3: the spike guard did not exist: no step was skipped for a spike, and its window is empty
    (it fills again over the next ``--spike_window`` steps before it judges any step)."""
    return meta | {"spike_steps": 0, "spike_guard": {"loss": [], "grad_norm": []}}


def add_format_and_split(meta: Metadata) -> Metadata:
    """3 -> 4: the version itself, and the split of the step that the loader's position was taken in.
    Older checkpoints were written at step boundaries only, where the split does not matter."""
    data = meta["data"] | {"world_size": None, "micro_batch_size": None}
    return meta | {"format_version": 4, "code_version": "unknown (before format 4)", "data": data}


def summarise_data_fingerprint(meta: Metadata) -> Metadata:
    """4 -> 5: ``meta.pt`` is unchanged; ``data_fingerprint.json`` of format 4 lists every shard, and
    ``lit_gpt.checkpoint.data_changes`` reads that list as it is (its digest is the same digest)."""
    return meta | {"format_version": 5}


# version -> the migration from it to the next version
MIGRATIONS: dict[int, Callable[[Metadata], Metadata]] = {
    1: drop_derived_counters,
    2: add_spike_guard,
    3: add_format_and_split,
    4: summarise_data_fingerprint,
}


def migrate(meta: Metadata, checkpoint: Path) -> Metadata:
    """``meta`` of ``checkpoint`` in today's format, or a one-line refusal saying what to do."""
    version = format_version(meta)
    if version is None:
        raise InvalidInput(
            f"{checkpoint} was written by a version of this code from before checkpoint formats were numbered "
            "and cannot be resumed; start a new run from its weights with --initial_checkpoint "
            f"{checkpoint} (the data order then starts again)"
        )
    if version > FORMAT_VERSION:
        raise InvalidInput(
            f"{checkpoint} has checkpoint format {version}, newer than this code reads (up to format "
            f"{FORMAT_VERSION}); resume it with the version of the code that wrote it "
            f"({meta.get('code_version', 'unknown')}) or a later one"
        )
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise InvalidInput(
                f"{checkpoint} has checkpoint format {version}, which this code cannot migrate to format "
                f"{FORMAT_VERSION}; start a new run from its weights with --initial_checkpoint {checkpoint}"
            )
        meta = MIGRATIONS[version](meta)
        version += 1
    return meta
