"""Checkpoints: the training-state directory (its schema, atomic save, exact load) and model weights.

A training checkpoint is ``out_dir/step-{step:08d}/``: the sharded model and optimizer state written by
Fabric (torch.distributed.checkpoint, one file per rank), its ``meta.pt`` with counters, the loader's
position and the format version (``lit_gpt.migrations`` reads older formats), ``data_fingerprint.json``
(per training source the digest of its shard names and sizes, and its totals; the lists themselves are
in ``out_dir/data_manifests/<digest>.json``, written once per run), and ``model_config.json``,
``hyperparameters.json`` and a copy of the tokenizer so that the directory describes itself. It is
written as ``out_dir/.tmp-step-{step:08d}`` and renamed when every rank has finished, so a crash never
leaves a directory that looks complete, and a write that fails (a full disk, a quota, EIO, on any rank)
is one error on every rank with the temporary directory removed. Reading the weights alone (conversion,
evaluation) is ``lit_gpt.weights``.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from lit_gpt.config import Config
from lit_gpt.data.index import Fingerprint
from lit_gpt.errors import CheckpointWriteFailed, InvalidInput, MissingInput, OutOfSpace
from lit_gpt.migrations import FORMAT_VERSION, migrate
from lit_gpt.rank_zero import computed_on_rank_0
from lit_gpt.tokenizer import Tokenizer

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")
DATA_FINGERPRINT = "data_fingerprint.json"  # per training source: the digest of its shards' names and sizes
DATA_MANIFESTS = "data_manifests"  # in out_dir: per digest, the names and sizes, to explain a change
RUN_FILES = (
    "metrics.csv",
    DATA_MANIFESTS,
    "tensorboard",
    "wandb",
    "wandb_run_id",
    "restarts.json",
)  # what a run writes into out_dir besides checkpoints


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """The finished checkpoints in ``out_dir``, oldest first (temporary directories are ignored)."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def remove_run(out_dir: Path) -> list[str]:
    """Delete a run's checkpoints (complete or not), logs and data manifests from ``out_dir``; returns what
    was removed, the manifests (which only explain the checkpoints) last."""
    removed = []
    found = (
        sorted(out_dir.iterdir(), key=lambda path: (path.name == DATA_MANIFESTS, path.name)) if out_dir.is_dir() else []
    )
    for path in found:
        if not (CHECKPOINT_PATTERN.match(path.name.removeprefix(".tmp-")) or path.name in RUN_FILES):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def check_writable(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that cannot be written (read-only, no permission) at start-up, before a
    checkpoint is loaded and long before the first one is saved."""
    taken = next((path for path in (out_dir, *out_dir.parents) if path.exists()), None)
    if taken is not None and not taken.is_dir():
        raise InvalidInput(f"--out_dir {out_dir}: {taken} is a file, not a folder; choose another --out_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        raise InvalidInput(f"--out_dir {out_dir} cannot be written: {error.strerror or error}") from None


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


class CheckpointWriter:
    """Writes training checkpoints atomically, in the foreground or in the background.

    The model and optimizer state go through torch.distributed.checkpoint (one file per rank, the
    layout ``fabric.load`` reads), the rest of ``state`` into ``meta.pt``. In the background
    (``background=True``) the sharded state is first copied to CPU memory (the training loop waits only
    for that copy), then a thread writes it, while training goes on. Either way the checkpoint is
    written under a temporary name and renamed once every rank has written its part, so a crash or a
    ``kill -9`` leaves the previous checkpoint as the newest complete one. At most one write is in flight:
    a save waits for the one before, and ``finish()`` (at the end of training) for the last.
    """

    def __init__(
        self,
        fabric: Any,
        out_dir: Path,
        model_config: Config,
        run_config: dict[str, Any],
        fingerprint: dict[str, Fingerprint],
        tokenizer_path: Path | None,
        keep: int,
        background: bool = False,
    ) -> None:
        import torch.distributed as dist

        self.fabric, self.out_dir, self.keep = fabric, out_dir, keep
        self.fingerprint = fingerprint
        self.files = {  # written into every checkpoint, so that it describes itself
            "model_config.json": model_config.to_dict(),
            "hyperparameters.json": run_config,
        }
        self.tokenizer_files = Tokenizer(tokenizer_path).files if tokenizer_path is not None else []
        self.background = background
        self.code_version = code_version()
        # The writer thread's collectives need a process group of their own, next to training's (and on
        # CPU, as async saving asks for one even when training talks over NCCL).
        self.group = dist.new_group(backend="gloo") if background else None
        self.in_flight: tuple[Any, Path, Path] | None = None  # (future, temporary dir, final dir)
        self.started = 0.0
        self.write_seconds = 0.0  # how long the last complete checkpoint took, from start to rename
        self.needed = 0  # the bytes of the last checkpoint, all ranks together

    def save(self, state: dict[str, Any]) -> Path:
        """Start writing ``state`` (``model``, ``optimizer``, ``step`` and plain values) as
        ``out_dir/step-{step:08d}``; in the foreground the checkpoint is complete on return.

        A checkpoint that the filesystem has no room for is refused before anything is written (the
        bytes every rank will write, summed, against the free space), and a write that fails anyway
        (a quota, a disk shared with other jobs) is one error on every rank: the temporary directory is
        removed and the older checkpoints stay as they were."""
        import torch.distributed.checkpoint as dcp

        self.finish()
        self.started = time.perf_counter()
        final = self.out_dir / checkpoint_name(state["step"])
        tmp = self.out_dir / f".tmp-{final.name}"
        tensors, metadata = sharded_state(state)
        metadata |= {"format_version": FORMAT_VERSION, "code_version": self.code_version}
        self.needed = self.check_space(tensors, final, tmp)

        def describe() -> None:  # rank 0: the directory, and the files that describe the checkpoint
            if tmp.exists():
                shutil.rmtree(tmp)  # left by a crash during an earlier save
            tmp.mkdir(parents=True)
            torch.save(metadata, tmp / "meta.pt")
            if DATA_FINGERPRINT not in self.files:  # the first save of this job
                self.files[DATA_FINGERPRINT] = {name: data.summary() for name, data in self.fingerprint.items()}
                write_manifests(self.out_dir, self.fingerprint)
            for name, content in self.files.items():
                (tmp / name).write_text(json.dumps(content, indent=2, default=str))
            for path in self.tokenizer_files:  # tokenizer.model, or tokenizer.json and its companions
                shutil.copy(path, tmp / path.name)

        self.on_rank_0(describe, final, tmp)
        try:
            if self.background:
                future = dcp.async_save(tensors, checkpoint_id=tmp, process_group=self.group)
                self.in_flight = (future, tmp, final)
                return final
            dcp.save(tensors, checkpoint_id=tmp)
        except (Exception, CheckpointException) as error:  # a failure on any rank is reported to every rank
            raise self.write_failed(error, final, tmp) from None
        self.in_flight = (None, tmp, final)
        self.finish()
        self.fabric.barrier()
        return final

    def check_space(self, tensors: dict[str, Any], final: Path, tmp: Path) -> int:
        """The bytes this checkpoint needs (every rank's tensors, and a margin for the small files);
        refused on every rank where the filesystem of ``out_dir`` has fewer free."""
        from torch.utils._pytree import tree_leaves

        local = sum(
            leaf.to_local().nbytes if hasattr(leaf, "to_local") else leaf.nbytes
            for leaf in tree_leaves(tensors)
            if isinstance(leaf, torch.Tensor)
        )
        needed = (
            int(
                self.fabric.all_reduce(
                    torch.tensor(float(local), dtype=torch.float64, device=self.fabric.device), reduce_op="sum"
                ).item()
            )
            + 2**20
        )
        try:
            free, problem = shutil.disk_usage(self.out_dir).free, None
        except OSError as error:  # the directory vanished, the mount went away
            free, problem = 0, error
        room = int(
            self.fabric.all_reduce(
                torch.tensor(float(free >= needed), device=self.fabric.device), reduce_op="min"
            ).item()
        )
        if problem is not None:
            raise self.write_failed(problem, final, tmp)
        if not room:
            raise OutOfSpace(self.no_space(final, needed, free))
        return needed

    def no_space(self, final: Path, needed: int, free: int) -> str:
        return (
            f"No space left on the device of {self.out_dir} for checkpoint {final.name}: it needs about "
            f"{needed:,} bytes, {free:,} are free; {self.newest_intact()}. Free space (or lower "
            "--keep_checkpoints) and rerun the same command: it resumes from the newest checkpoint"
        )

    def newest_intact(self) -> str:
        try:
            kept = complete_checkpoints(self.out_dir)
        except OSError as error:
            return f"the older checkpoints cannot be listed either ({error.strerror or error})"
        return f"the newest complete one, {kept[-1].name}, is intact" if kept else "no older checkpoint exists"

    def on_rank_0(self, write: Any, final: Path, tmp: Path) -> None:
        """Run ``write`` on rank 0; every rank learns whether it failed, and all raise the same error."""
        failure = None
        if self.fabric.global_rank == 0:
            try:
                write()
            except Exception as error:
                failure = self.write_failed(error, final, tmp)
        failed = self.fabric.all_reduce(
            torch.tensor(float(failure is not None), device=self.fabric.device), reduce_op="max"
        ).item()
        if failure is not None:
            raise failure
        if failed:
            raise InvalidInput(f"Rank 0 could not write checkpoint {final}")  # rank 0 prints why

    def write_failed(self, error: BaseException, final: Path, tmp: Path) -> BaseException:
        """The error to raise for a failed write, after removing its temporary directory: a filesystem
        error (a full disk, a quota, EIO, a vanished directory; on any rank) in one line that names the
        file and the cause, anything else (a bug) as it is."""
        if self.fabric.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        cause = filesystem_cause(error)
        if cause is None:
            return error
        try:
            free = shutil.disk_usage(self.out_dir).free
        except OSError:
            free = None
        full = getattr(cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(cause)
        if full or (free is not None and free < self.needed):
            return OutOfSpace(self.no_space(final, self.needed, free or 0))
        return CheckpointWriteFailed(
            f"Cannot write checkpoint {final}: {describe_os_error(cause)}; {self.newest_intact()}. Fix the "
            "filesystem and rerun the same command: it resumes from the newest checkpoint"
        )

    def poll(self) -> Path | None:
        """The checkpoint whose background write has just completed (now renamed into place), if any."""
        if self.in_flight is None or (self.in_flight[0] is not None and not self.in_flight[0].done()):
            return None
        return self.finish()

    def finish(self) -> Path | None:
        """Wait for the write in flight, if any, and put its checkpoint in place; returns it."""
        if self.in_flight is None:
            return None
        future, tmp, final = self.in_flight
        self.in_flight = None
        if future is not None:
            try:
                future.result()  # on rank 0 (the coordinator), complete only when every rank has written
            except (Exception, CheckpointException) as error:
                raise self.write_failed(error, final, tmp) from None
        if self.fabric.global_rank == 0:
            try:
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                for old in complete_checkpoints(self.out_dir)[: -self.keep] if self.keep > 0 else []:
                    shutil.rmtree(old)
            except OSError as error:
                raise self.write_failed(error, final, tmp) from None
        self.write_seconds = time.perf_counter() - self.started
        return final


def filesystem_cause(error: BaseException) -> BaseException | None:
    """The filesystem error behind a failed write, if one is: ``error`` itself, one that a rank reported
    through torch.distributed.checkpoint (``CheckpointException`` holds every rank's), or its cause.
    ``torch.save`` reports a full disk as a RuntimeError ("unexpected pos")."""
    if isinstance(error, CheckpointException):
        for _, (raised, _trace) in sorted(error.failures.items()):
            found = filesystem_cause(raised)
            if found is not None:
                return found
        return None
    if isinstance(error, OSError) or "No space left" in str(error) or "unexpected pos" in str(error):
        return error
    for linked in (error.__cause__, error.__context__):
        if linked is not None and linked is not error:
            found = filesystem_cause(linked)
            if found is not None:
                return found
    return None


def describe_os_error(error: BaseException) -> str:
    """``[Errno 27] File too large: 'x'`` as ``File too large (EFBIG): x``."""
    if "unexpected pos" in str(error):  # torch.save's writer hides the error of the write it cut short
        return (
            "a write was cut short (a full disk, a quota, a file-size limit or an I/O error; PyTorch's writer "
            f"says: {str(error).strip().splitlines()[0]})"
        )
    if not isinstance(error, OSError) or error.errno is None:
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    name = errno.errorcode.get(error.errno, str(error.errno))
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or os.strerror(error.errno)} ({name}){where}"


def code_version() -> str:
    """Which code wrote a checkpoint: the package version and, in a git checkout, the commit."""
    try:
        version = f"lit-gpt-tinyllama {importlib.metadata.version('lit-gpt-tinyllama')}"
    except importlib.metadata.PackageNotFoundError:  # run from a clone that was not installed
        version = "lit-gpt-tinyllama"
    try:
        root = Path(__file__).resolve().parents[1]
        command = ["git", "-C", str(root), "describe", "--always", "--dirty"]
        commit = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version} ({commit})" if commit else version


def sharded_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``state`` split as Fabric saves it: the model's and optimizer's sharded state dicts (their
    tensors, offloaded to CPU), and everything else (counters, positions) for ``meta.pt``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=False, cpu_offload=True)
    unwrapped = {key: unwrap(obj) for key, obj in state.items()}  # Fabric's wrappers hold the real objects
    model = next(obj for obj in unwrapped.values() if isinstance(obj, torch.nn.Module))
    tensors, metadata = {}, {}
    for key, obj in unwrapped.items():
        if isinstance(obj, torch.nn.Module):
            tensors[key] = get_model_state_dict(obj, options=options)
        elif isinstance(obj, torch.optim.Optimizer):
            tensors[key] = get_optimizer_state_dict(model, obj, options=options)
        else:
            metadata[key] = obj
    return tensors, metadata


def unwrap(obj: Any) -> Any:
    """The module or optimizer inside Fabric's wrapper (``fabric.setup``), or ``obj`` itself."""
    if isinstance(obj, torch.nn.Module):
        return getattr(obj, "module", obj)
    return getattr(obj, "optimizer", obj)


def write_manifests(out_dir: Path, fingerprint: dict[str, Fingerprint]) -> None:
    """The shard names and sizes of each source, as ``out_dir/data_manifests/<digest>.json``, unless a
    job of the run wrote them already: a resume on changed data reads them to say what changed."""
    directory = out_dir / DATA_MANIFESTS
    directory.mkdir(exist_ok=True)
    for data in fingerprint.values():
        path = directory / f"{data.digest}.json"
        if not path.is_file():
            tmp = directory / f".{path.name}.tmp"
            tmp.write_text(json.dumps(data.to_dict(), separators=(",", ":")))
            os.replace(tmp, path)


def load_training_state(
    fabric: Any, checkpoint: Path, state: dict[str, Any], fingerprint: dict[str, Fingerprint], allow_data_change: bool
) -> list[str]:
    """Fill ``state`` from ``checkpoint`` after checking that the training data is the checkpoint's;
    returns what changed in the data where ``allow_data_change`` lets it pass. Rank 0 compares the data
    (digests, and the manifests only where they differ) and tells the others."""
    meta = migrate(torch.load(checkpoint / "meta.pt", weights_only=True), checkpoint)
    changes = computed_on_rank_0(fabric, lambda: data_changes(checkpoint, fingerprint))
    if changes and not allow_data_change:
        raise InvalidInput(f"{changes[0]}. Pass --allow_data_change true if this is meant.")
    tensors = {key: obj for key, obj in state.items() if isinstance(obj, torch.nn.Module | torch.optim.Optimizer)}
    fabric.load(checkpoint, tensors)
    state.update({key: meta[key] for key in state if key not in tensors})
    if state["data"]["step"] != state["step"]:
        position = state["data"]["step"]
        raise InvalidInput(f"{checkpoint}: its data position is at step {position}, not {state['step']}")
    return changes


def data_changes(checkpoint: Path, fingerprint: dict[str, Fingerprint]) -> list[str]:
    """How the training sources differ from those ``checkpoint`` was trained on, one sentence each: the
    digests first; where one differs, the shards named from the run's manifest of the old digest (or,
    in checkpoints of format 4 and older, the lists they hold)."""
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
        old = recorded[name]
        if old["digest"] == current.digest:
            continue
        change = f"Training source {name!r} changed since {checkpoint}: "
        manifest = checkpoint.parent / DATA_MANIFESTS / f"{old['digest']}.json"
        if "names" in old or manifest.is_file():
            listed = old if "names" in old else json.loads(manifest.read_text())
            changes.append(change + current.changes_since(Fingerprint.from_dict(listed)))
        else:
            now = current.summary()
            changes.append(
                change + f"{old['shards']:,} shards of {old['tokens']:,} tokens then, {now['shards']:,} of "
                f"{now['tokens']:,} now (which ones changed is in {manifest}, which is missing)"
            )
    return changes
