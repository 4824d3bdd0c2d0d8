"""Checkpoints: the training-state directory (its schema, atomic save, exact load) and model weights.

A training checkpoint is ``out_dir/step-{step:08d}/``: the sharded model and optimizer state written by
Fabric (torch.distributed.checkpoint, one file per rank), its ``meta.pt`` with counters and the loader's
position, ``data_fingerprint.json`` (the training shards), and ``model_config.json``,
``hyperparameters.json`` and a copy of the tokenizer so that the directory describes itself. It is
written as ``out_dir/.tmp-step-{step:08d}`` and renamed when every rank has finished, so a crash never
leaves a directory that looks complete. A lit checkpoint is ``model.safetensors`` + ``model_config.json``
(+ ``tokenizer.model``): what conversion from Hugging Face writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from lit_gpt.config import Config
from lit_gpt.data.index import Fingerprint
from lit_gpt.errors import InvalidInput, MissingInput, OutputExists, TensorMismatch
from lit_gpt.tokenizer import Tokenizer

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")
DATA_FINGERPRINT = "data_fingerprint.json"  # the training shards' names and sizes, per source
RUN_FILES = ("metrics.csv", "tensorboard", "wandb")  # what a run writes into out_dir besides checkpoints


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """The finished checkpoints in ``out_dir``, oldest first (temporary directories are ignored)."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def remove_run(out_dir: Path) -> list[str]:
    """Delete a run's checkpoints (complete or not) and logs from ``out_dir``; returns what was removed."""
    removed = []
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if not (CHECKPOINT_PATTERN.match(path.name.removeprefix(".tmp-")) or path.name in RUN_FILES):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def resume_checkpoint(resume: bool | str | Path, out_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` asks for: "auto" the newest in ``out_dir`` if any, true the newest
    (which must exist), false none, or a given checkpoint directory."""
    if resume is False:
        return None
    if resume is True or resume == "auto":
        found = complete_checkpoints(out_dir)
        if not found and resume is True:
            raise MissingInput(f"--resume true but no checkpoint in {out_dir}")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "meta.pt").is_file():
        raise MissingInput(f"{path} is not a complete training checkpoint (no meta.pt)")
    return path


def save_training_state(
    fabric: Any,
    out_dir: Path,
    state: dict[str, Any],
    model_config: Config,
    run_config: dict[str, Any],
    fingerprint: dict[str, Fingerprint],
    tokenizer_path: Path | None,
    keep: int,
) -> Path:
    """Write a checkpoint of ``state`` (model, optimizer, ``step``, the loader's position ``data``, ...)
    with the files that make it self-describing, atomically; keep the newest ``keep`` checkpoints."""
    final = out_dir / checkpoint_name(state["step"])
    tmp = out_dir / f".tmp-{final.name}"
    if fabric.global_rank == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a crash during an earlier save
    fabric.barrier()
    fabric.save(tmp, state)
    if fabric.global_rank == 0:
        files = {
            "model_config.json": model_config.to_dict(),
            "hyperparameters.json": run_config,
            DATA_FINGERPRINT: {name: source.to_dict() for name, source in fingerprint.items()},
        }
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2, default=str))
        if tokenizer_path is not None:
            shutil.copy(Tokenizer(tokenizer_path).path, tmp / "tokenizer.model")
    fabric.barrier()
    if fabric.global_rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    fabric.barrier()
    return final


def load_training_state(
    fabric: Any, checkpoint: Path, state: dict[str, Any], fingerprint: dict[str, Fingerprint], allow_data_change: bool
) -> list[str]:
    """Fill ``state`` from ``checkpoint`` after checking that the training data is the checkpoint's;
    returns what changed in the data where ``allow_data_change`` lets it pass."""
    changes = data_changes(checkpoint, fingerprint)
    if changes and not allow_data_change:
        raise InvalidInput(f"{changes[0]}. Pass --allow_data_change true if this is meant.")
    fabric.load(checkpoint, state)
    if state["data"]["step"] != state["step"]:
        position = state["data"]["step"]
        raise InvalidInput(f"{checkpoint}: its data position is at step {position}, not {state['step']}")
    return changes


def data_changes(checkpoint: Path, fingerprint: dict[str, Fingerprint]) -> list[str]:
    """How the training sources differ from those ``checkpoint`` was trained on, one sentence each."""
    path = checkpoint / DATA_FINGERPRINT
    if not path.is_file():
        raise MissingInput(f"{checkpoint} has no {DATA_FINGERPRINT}: it was written by an older version")
    recorded = json.loads(path.read_text())
    if sorted(recorded) != sorted(fingerprint):
        raise InvalidInput(
            f"{checkpoint} was trained on the sources {sorted(recorded)}, this run names {sorted(fingerprint)}"
        )
    changes = []
    for name, current in fingerprint.items():
        change = current.changes_since(Fingerprint.from_dict(recorded[name]))
        if change is not None:
            changes.append(f"Training source {name!r} changed since {checkpoint}: {change}")
    return changes


# ---------------------------------------------------------------------------- reading model weights


def read_model_config(checkpoint_dir: Path) -> Config:
    path = checkpoint_dir / "model_config.json"
    if not path.is_file():
        raise MissingInput(f"No model_config.json in {checkpoint_dir}: not a lit or training checkpoint")
    return Config(**json.loads(path.read_text()))


def load_model_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The model's full state dict (Lit-GPT names) from a lit checkpoint directory (``model.safetensors``)
    or a training checkpoint (sharded by torch.distributed.checkpoint, read in this one process)."""
    if (checkpoint_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(checkpoint_dir / "model.safetensors")
    if not (checkpoint_dir / ".metadata").is_file():
        raise MissingInput(f"{checkpoint_dir} holds neither model.safetensors nor a sharded training checkpoint")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(checkpoint_dir).read_metadata().state_dict_metadata
    model = {
        key.removeprefix("model."): torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for key, meta in metadata.items()
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": model}, checkpoint_id=checkpoint_dir, no_dist=True)
    return model


def find_tokenizer(checkpoint_dir: Path, tokenizer_path: Path | None) -> Tokenizer | None:
    """The tokenizer given, else the copy that a training or lit checkpoint carries, else none."""
    if tokenizer_path is not None:
        return Tokenizer(tokenizer_path)
    if (checkpoint_dir / "tokenizer.model").is_file():
        return Tokenizer(checkpoint_dir / "tokenizer.model")
    return None


def check_state_dict(state_dict: dict[str, torch.Tensor], config: Config, source: Path) -> None:
    """Every tensor the model needs is there, with its shape, and nothing else."""
    from lit_gpt.model import GPT

    with torch.device("meta"):
        expected = {name: tensor.shape for name, tensor in GPT(config).state_dict().items()}
    for name, shape in expected.items():
        if name not in state_dict:
            raise TensorMismatch(f"{source}: missing tensor {name!r}")
        if state_dict[name].shape != shape:
            raise InvalidInput(
                f"{source}: tensor {name!r} has shape {tuple(state_dict[name].shape)}, expected {tuple(shape)}"
            )
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise TensorMismatch(f"{source}: unexpected tensor {unexpected[0]!r}")


def write_atomically(output_dir: Path, write: Any) -> None:
    """Call ``write(tmp_dir)`` and rename the result to ``output_dir``, which must not exist yet."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise OutputExists(f"{output_dir} exists and is not empty")
    tmp = output_dir.with_name(f".{output_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.iterdir():  # safetensors creates its files 0600: give them the usual mode
        path.chmod(0o666 & ~umask)
    if output_dir.exists():
        output_dir.rmdir()
    os.replace(tmp, output_dir)
