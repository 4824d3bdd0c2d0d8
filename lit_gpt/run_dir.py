"""A run directory belongs to one run at a time: its lock, and the claim that a start makes on it.

``claim_out_dir`` is what a training start does with ``--out_dir`` before anything else: take the lock,
clear what an interrupted run left half-written, and choose the checkpoint to resume from (or refuse to
mix a new run with an old one). ``out_dir/run.lock`` is held by global rank 0 for the life of a run.

Two runs in one ``--out_dir`` (a double ``sbatch``, a manual rerun beside a requeued job) would write
each other's checkpoints and metrics, and ``--resume auto`` would then continue the other run's state
without a word. So a run takes the lock before it touches anything in the directory, and a second start
is refused in one line that names the holder.

The lock must hold on a shared filesystem (NFS, Lustre), where ``flock`` may be local to a node or not
implemented. It is a file created by ``link(2)`` from a private temporary file: creating a name that
exists fails atomically on every POSIX filesystem, NFS included (the classic NFS-safe lock). The file
records who holds it -- host, process id and its start time, SLURM job id, the time taken -- and a
thread touches it every ``HEARTBEAT_S`` seconds, so a refusal can say when the holder was last alive.

A lock is taken over only when its holder is provably gone, and the run says so:
- the holder ran on this host and its process is gone (a ``kill -9``, a crash, torchrun's restart);
- the holder ran on another host in this SLURM job (a requeued job takes its own lock back), or in a
  job that SLURM reports as no longer running (ended, cancelled, requeued and waiting).
Anything else (a holder on another host outside SLURM, however old its heartbeat) is refused with the
heartbeat's age and the way to clear it by hand: delete ``run.lock`` once that process is known to be gone.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_gpt.checkpoint import CHECKPOINT_PATTERN, complete_checkpoints, remove_run, resume_checkpoint
from lit_gpt.errors import InvalidInput
from lit_gpt.preemption import slurm_job
from lit_gpt.rank_zero import computed_on_rank_0

if TYPE_CHECKING:
    from lit_gpt.run import RunConfig

LOCK = "run.lock"
HEARTBEAT_S = 30.0
ALIVE_SLURM_STATES = {"RUNNING", "COMPLETING", "SUSPENDED", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: enough to tell, from any node, whether that process still exists."""

    host: str
    pid: int
    started: str  # the process's start time in the kernel's clock ticks since boot ("" where unknown)
    slurm_job: str | None
    taken_at: float
    token: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(
            socket.gethostname(), os.getpid(), process_start(os.getpid()), slurm_job(), time.time(), uuid.uuid4().hex
        )

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.taken_at))
        return f"process {self.pid} on {self.host}{job}, since {since}"


class RunLock:
    """The lock of ``out_dir``: ``acquire()`` it (refused while another run holds it), ``release()`` it
    at the end (also at exit, with ``atexit``; a killed holder leaves it for the next start to take over)."""

    def __init__(self, out_dir: Path, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = out_dir / LOCK
        self.heartbeat_s = heartbeat_s
        self.holder = Holder.this_process()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a sentence when it took over from a holder that is gone, else None."""
        taken_over = None
        for _ in range(10):  # a few rounds: another start may take or drop the lock meanwhile
            if self.create():
                self.start_heartbeat()
                return taken_over
            current = read_holder(self.path)
            if current is None:  # removed meanwhile, or still being written by another start
                time.sleep(0.2)
                continue
            gone = why_gone(current)
            if gone is None:
                raise InvalidInput(self.busy(current))
            if self.remove_stale(current):
                taken_over = f"took over the run lock {self.path} from {current.describe()}: {gone}"
        raise InvalidInput(f"Could not take the run lock {self.path}: other starts keep taking it; retry")

    def create(self, path: Path | None = None) -> bool:
        """Create the lock file (or ``path``) with our record, atomically; False where it exists."""
        tmp = self.path.with_name(f".{LOCK}.{self.holder.token}")
        tmp.write_text(json.dumps(asdict(self.holder)) + "\n")
        try:
            os.link(tmp, path or self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def remove_stale(self, stale: Holder) -> bool:
        """Remove the lock of ``stale``, and only that one. Of several starts taking it over at once, the
        one that creates ``run.lock.takeover`` does it, checking that the lock is still ``stale``'s; the
        others wait for it and then find the winner's lock. A takeover left by a killed start is removed."""
        guard = self.path.with_name(f"{LOCK}.takeover")
        if not self.create(guard):
            taker = read_holder(guard)
            if taker is not None and why_gone(taker) is not None:
                guard.unlink(missing_ok=True)
            time.sleep(0.2)
            return False
        try:
            current = read_holder(self.path)
            if current is None or current.token != stale.token:
                return False
            self.path.unlink()
            return True
        finally:
            guard.unlink(missing_ok=True)

    def busy(self, current: Holder) -> str:
        age = heartbeat_age(self.path)
        beat = f"; its last heartbeat was {age:.0f} s ago" if age is not None else ""
        return (
            f"{self.path.parent} is in use by another run ({current.describe()}{beat}); wait for it to end, use "
            f"another --out_dir, or, if that process is gone, delete {self.path} and rerun"
        )

    def start_heartbeat(self) -> None:
        atexit.register(self.release)
        HELD.append(self)
        self.thread = threading.Thread(target=self.beat, name="run-lock-heartbeat", daemon=True)
        self.thread.start()

    def beat(self) -> None:
        """Touch the lock while it is ours (the holder is alive); stop touching it once it is not."""
        while not self.stopped.wait(self.heartbeat_s):
            current = read_holder(self.path)
            if current is None or current.token != self.holder.token:
                return
            try:
                os.utime(self.path)
            except OSError:
                pass  # a filesystem hiccup: the next beat tries again

    def release(self) -> None:
        """Drop the lock if it is still ours (not from a forked child, which shares our record)."""
        self.stopped.set()
        if os.getpid() != self.holder.pid:
            return
        current = read_holder(self.path)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)


HELD: list[RunLock] = []  # the locks this process holds


def release_locks() -> None:
    """Drop this process's locks now: before ``os._exit``, which skips ``atexit``."""
    for lock in HELD:
        lock.release()


def read_holder(path: Path) -> Holder | None:
    """The record in a lock file; None where there is none (or it cannot be read as one)."""
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def heartbeat_age(path: Path) -> float | None:
    try:
        return max(time.time() - path.stat().st_mtime, 0.0)
    except OSError:
        return None


def why_gone(holder: Holder) -> str | None:
    """Why ``holder`` provably no longer runs, or None where it may still. On its own host its process
    answers; elsewhere SLURM does: this very job (requeued or restarted), or a job that has ended."""
    if holder.host == socket.gethostname():
        return None if process_exists(holder.pid, holder.started) else f"process {holder.pid} no longer exists"
    job = slurm_job()
    if holder.slurm_job is not None and holder.slurm_job == job:
        return f"it was this SLURM job ({job}) before its requeue or restart"
    if holder.slurm_job is not None:
        state = slurm_job_state(holder.slurm_job)
        if state is not None and state not in ALIVE_SLURM_STATES:
            return f"SLURM reports job {holder.slurm_job} as {state}"
    return None


def process_start(pid: int) -> str:
    """A process's start time (field 22 of /proc/PID/stat), which tells a reused process id apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def process_exists(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's
    return not started or process_start(pid) in ("", started)


def slurm_job_state(job: str) -> str | None:
    """What ``scontrol`` says of ``job`` ("RUNNING", "COMPLETED", ...; "UNKNOWN" once SLURM has forgotten
    it), or None where SLURM cannot be asked."""
    try:
        result = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return "UNKNOWN" if "Invalid job id" in result.stderr else None
    for field in result.stdout.split():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    return None


def claim_out_dir(fabric: Any, run: RunConfig, say: Callable[[str], None]) -> Path | None:
    """Take ``run.out_dir`` for this run and return the checkpoint to resume from. The lock comes first
    (a refusal touches nothing); then what an interrupted save left is removed, and a new run is refused
    where an old one is, unless ``--overwrite true`` removes the old one."""
    if run.overwrite and run.resume is not False:
        raise InvalidInput("--overwrite true starts a new run: give it with --resume false")
    took_over = computed_on_rank_0(fabric, lambda: RunLock(run.out_dir).acquire())
    if took_over is not None:
        say(f"warning: {took_over}")
    if fabric.global_rank == 0:
        for name in remove_partial_writes(run.out_dir):
            say(f"Removed {run.out_dir / name}, left half-written by an interrupted run")
    existing = complete_checkpoints(run.out_dir)
    if run.resume is not False or not existing:
        resume_from = resume_checkpoint(run.resume, run.out_dir)
        newer = [path.name for path in existing if resume_from is not None and path.name > resume_from.name]
        if newer and isinstance(run.resume, Path | str) and run.resume != "auto":
            say(
                f"warning: --resume {resume_from}: {run.out_dir} holds newer checkpoints ({', '.join(newer)}); "
                "this run replaces each as it reaches its step"
            )
        return resume_from
    if not run.overwrite:
        raise InvalidInput(
            f"{run.out_dir} holds another run (newest checkpoint {existing[-1].name}); continue it with "
            "--resume auto, start the new run in another --out_dir, or delete the old run with --overwrite true"
        )
    fabric.barrier()
    if fabric.global_rank == 0:
        removed = remove_run(run.out_dir)
        say(f"--overwrite: removed the previous run's {', '.join(removed)} from {run.out_dir}")
    fabric.barrier()
    return None


def remove_partial_writes(out_dir: Path) -> list[str]:
    """Delete the temporary checkpoint directories and files that a killed run left in ``out_dir`` (only
    its holder may: the lock is held); returns their names."""
    removed = []
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        partial_checkpoint = CHECKPOINT_PATTERN.match(
            path.name.removeprefix(".tmp-")
        ) and path.name != path.name.removeprefix(".tmp-")
        partial_file = path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()
        if partial_checkpoint:
            shutil.rmtree(path, ignore_errors=True)
        elif partial_file:
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(path.name)
    return removed
