"""A run that stops making progress: a restart loop, or a rank that hangs. Both end with a line.

Restart loops. ``torchrun --max-restarts N`` and a SLURM requeue both start a failed run again from its newest
checkpoint. If it fails again before writing a newer one, every further start repeats the same
failure. ``out_dir/restarts.json`` records the checkpoint the run last started from and how many
times in a row it did; a start beyond ``--max_restarts_without_progress`` restarts from the same
checkpoint is refused, naming it. Any newer checkpoint, a clean stop or the end of the run resets it.

Hung ranks. A rank that stops (a dead node, a stuck filesystem, SIGSTOP) leaves the others waiting in
the next collective. Start-up and the first step may legitimately take long (reading the index and the
checkpoint from a congested filesystem, compiling), so they run under ``--startup_timeout``; after the
first step ``--collective_timeout`` applies to every process group. A rank whose collective times out
prints one line naming itself and the step and exits with ``TIMEOUT_STATUS``, so the launcher ends the
job within the timeout instead of the backend's default (30 minutes for gloo, 10 for NCCL).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from lit_gpt.errors import InvalidInput

RESTARTS = "restarts.json"


def relaunched() -> bool:
    """Whether a launcher started this run again after a failure: torchrun's restarts, SLURM's requeue
    (a person rerunning the command is not a restart)."""
    counts = (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.environ.get("SLURM_RESTART_COUNT", "0"))
    return any(int(count or 0) > 0 for count in counts)


def count_start(out_dir: Path, resumed_from: Path | None, limit: int, restarted: bool) -> int:
    """Record one more start from ``resumed_from`` (None: from scratch) and return how many restarts in
    a row, this one included, have started there (0 for a start that no launcher ``restarted``); refuse
    the start once that exceeds ``limit``."""
    path = out_dir / RESTARTS
    if not restarted:
        reset_restarts(out_dir)
        return 0
    where = resumed_from.name if resumed_from is not None else "the start"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    restarts = previous["restarts"] + 1 if previous.get("from") == where else 1
    if restarts > limit:
        raise InvalidInput(
            f"The run in {out_dir} was restarted {restarts - 1} times from {where} and failed each time "
            f"before a newer checkpoint (--max_restarts_without_progress {limit}); the error that stops it is "
            f"in the log of the previous attempts. After fixing it, delete {path} and rerun"
        )
    write(path, {"from": where, "restarts": restarts})
    return restarts


def reset_restarts(out_dir: Path) -> None:
    """The run made progress (a new checkpoint) or stopped cleanly: the next start counts afresh."""
    (out_dir / RESTARTS).unlink(missing_ok=True)


def write(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content) + "\n")
    os.replace(tmp, path)


TIMEOUT_STATUS = 3  # the exit status of a rank whose collective timed out


def set_collective_timeout(seconds: float) -> None:
    """Apply ``seconds`` to every process group of this process (the default one and the device mesh's)."""
    from torch.distributed import distributed_c10d

    for group in list(distributed_c10d._world.pg_map):
        distributed_c10d._set_pg_timeout(timedelta(seconds=seconds), group)


def is_collective_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a collective that timed out (gloo's and NCCL's wordings)."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("Timed out" in text or "timed out" in text or "Timeout" in text)
