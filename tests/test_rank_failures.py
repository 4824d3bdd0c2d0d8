"""When one rank of a job fails, the job says it once (lit_gpt/rank_failures.py), and torchrun's restarts
resume the run (lit_gpt/launch.py: each attempt forms its process group in its own namespace)."""

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from lit_gpt.run_dir import LOCK

from conftest import REPO_ROOT, metrics, processes_with, torchrun, train_args

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"
WORKER_TRACEBACK = re.compile(r"^\[rank\d+\]:", re.MULTILINE)  # how a worker's uncaught traceback reaches torchrun


def worker_exit_codes(torchrun_output: str) -> list[int]:
    return [int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+)", torchrun_output)]


def damage(shard: Path) -> None:
    tokens = bytearray(shard.read_bytes())
    tokens[100] ^= 0xFF
    shard.write_bytes(bytes(tokens))


def test_a_damaged_shard_on_two_ranks_with_workers_is_one_error_line(data, tmp_path):
    damage(data / "a" / "train_a_0_0000000001.bin")
    args = train_args(data, tmp_path / "out", "--max_steps", "40", "--num_workers", "1", "--devices", "2")
    result = subprocess.run([*torchrun(2), str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "train_a_0_0000000001.bin: its content is not what was indexed" in lines[0], (
        result.stderr
    )
    assert not WORKER_TRACEBACK.search(result.stderr) and "Connection closed by peer" not in result.stderr
    assert result.returncode == 1 and set(worker_exit_codes(result.stderr)) == {2}, result.stderr[-3000:]


def start(command: list[str], log: Path) -> subprocess.Popen:
    """``command`` in the background, its stdout and stderr in ``log``.out/.err (a pipe nobody reads
    would stop it once full)."""
    with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)


def worker(out_dir: Path, rank: int) -> int | None:
    """The process id of the training process of global rank ``rank`` (torchrun sets RANK), if running."""
    for pid in processes_with(str(out_dir), launchers=False):
        try:
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
        except OSError:
            continue  # it ended meanwhile
    return None


def test_a_killed_rank_leaves_one_line_from_rank_0_and_the_lock_released(data, tmp_path, no_process_left):
    out_dir = tmp_path / "out"
    args = train_args(data, out_dir, "--max_steps", "5000", "--eval_interval", "10000", "--devices", "2")
    job = start([*torchrun(2), str(SCRIPT), *args], tmp_path / "job")
    while not (out_dir / "metrics.csv").exists() or len((out_dir / "metrics.csv").read_text().splitlines()) < 5:
        assert job.poll() is None, (tmp_path / "job.err").read_text()
        time.sleep(0.2)
    subprocess.run(["kill", "-9", str(worker(out_dir, 1))], check=True)
    assert job.wait(timeout=300) == 1
    stderr = (tmp_path / "job.err").read_text()
    assert stderr.count("rank 0: stopping: another rank failed or was stopped") == 1, stderr[-3000:]
    assert not WORKER_TRACEBACK.search(stderr), stderr[-3000:]
    assert "error: " not in stderr and not (out_dir / LOCK).exists()


def kill_a_worker_after_each_resume(out_dir: Path, job: subprocess.Popen, log: Path, kills: int) -> list[int]:
    """kill -9 one worker (rank 1, then 0, ...) each time the run, started or restarted, has resumed and
    saved a checkpoint newer than the one it resumed from; returns the newest checkpoint at each kill."""
    killed_after = []
    for kill in range(kills):
        newest = killed_after[-1] if killed_after else 0
        while True:
            assert job.poll() is None, Path(f"{log}.err").read_text()[-3000:]
            resumed = Path(f"{log}.out").read_text().count("Resumed from ")
            saved = sorted(int(p.name[5:]) for p in out_dir.glob("step-*"))
            pid = worker(out_dir, 1 - kill % 2)
            if resumed == kill and saved and saved[-1] > newest and pid is not None:
                break
            time.sleep(0.1)
        subprocess.run(["kill", "-9", str(pid)], check=False)
        killed_after.append(saved[-1])
    return killed_after


@pytest.mark.parametrize("repeat", range(2))  # the failure this guards against was a race: try it more than once
def test_torchrun_restarts_after_three_kills_end_with_the_uninterrupted_losses(data, tmp_path, no_process_left, repeat):
    extra = ["--max_steps", "60", "--save_interval", "5", "--eval_interval", "1000", "--devices", "2"]
    reference = tmp_path / "reference"
    subprocess.run([*torchrun(2), str(SCRIPT), *train_args(data, reference, *extra)], check=True, capture_output=True)

    out_dir, log = tmp_path / "out", tmp_path / "job"
    job = start([*torchrun(2, "--max-restarts", "3"), str(SCRIPT), *train_args(data, out_dir, *extra)], log)
    killed_after = kill_a_worker_after_each_resume(out_dir, job, log, kills=3)
    assert job.wait(timeout=600) == 0, Path(f"{log}.err").read_text()[-4000:]
    stdout = Path(f"{log}.out").read_text()
    resumed = [int(step.replace(",", "")) for step in re.findall(r"Resumed from \S+ at step ([\d,]+)", stdout)]
    assert len(resumed) == 3 and np.all(np.array(resumed) >= np.array(killed_after)), (resumed, killed_after)
    assert metrics(out_dir, "train_loss") == metrics(reference, "train_loss")
