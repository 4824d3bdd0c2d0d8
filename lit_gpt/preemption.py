"""Stopping a run cleanly when the cluster or the user asks: signals, the agreement of all ranks, requeue.

SLURM sends SIGUSR1 a chosen time before a job's time limit (``#SBATCH --signal=B:USR1@600``) and
SIGTERM when it preempts, cancels or ends a job; Ctrl-C is SIGINT. Any of them, received by any rank,
only sets a flag (``StopRequest``): the training step adds the flag to the loss it all-reduces anyway,
so every rank learns of it after the same optimizer step at no extra collective, and they save a
checkpoint together and exit with status 128 + the signal's number (SIGINT 130, SIGUSR1 138, SIGTERM
143). On SIGUSR1 inside a SLURM job, global rank 0 first requeues the job (``scontrol requeue``; an
array job's own task), so that it continues with ``--resume auto`` when SLURM starts it again.
A second signal while saving changes nothing: the checkpoint is still written whole or not at all.

SIGUSR1 is caught from the moment the settings are read (``EARLY``), before the checks of the inputs, the
forming of the process group and the loading of the checkpoint, which can take minutes at scale: its default
action kills a process, and the requeue it asks for would be lost with it, ending the chain of jobs. A
start-up that receives it trains one step and stops there. SIGTERM and Ctrl-C keep their default effect
until the process group is formed: they end a start-up at once, as there is nothing to save yet.
"""

from __future__ import annotations

import os
import signal
import subprocess
from types import FrameType

SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
EARLY = (signal.SIGUSR1,)


class StopRequest:
    """The signal this process received, if any (the last one); handlers installed by ``install()``."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None

    def install(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        for signum in signals:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    @property
    def flag(self) -> float:
        """1.0 once a signal was received: summed into the step's all-reduce."""
        return float(self.received is not None)


def exit_status(received: signal.Signals | None) -> int:
    """The status of a run stopped by ``received`` after saving: 128 + its number, as a shell reports
    a process killed by it (SIGTERM from another rank's agreement is reported as SIGTERM)."""
    return 128 + int(received or signal.SIGTERM)


def slurm_job() -> str | None:
    """The SLURM job this process runs in, as ``scontrol`` names it (``123_4`` for an array task)."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job: str) -> str:
    """Ask SLURM to requeue ``job``; returns what to tell the user."""
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"could not requeue SLURM job {job}: {error}"
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        return f"could not requeue SLURM job {job}: {reason[-1] if reason else f'status {result.returncode}'}"
    return f"requeued SLURM job {job}"
