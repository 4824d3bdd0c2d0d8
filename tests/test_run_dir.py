"""A run directory belongs to one run at a time: the lock (lit_gpt/run_dir.py) on its own, under racing
starts, and around real training runs started twice into one --out_dir."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_gpt.errors import InvalidInput
from lit_gpt.run_dir import LOCK, Holder, RunLock, process_start, read_holder

from conftest import REPO_ROOT, assert_refused, metrics, processes_with, train_args

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"


def plant(out_dir: Path, **fields) -> Holder:
    """A lock file as another holder would have left it."""
    holder = Holder(
        **({"host": socket.gethostname(), "pid": 1, "started": "", "slurm_job": None} | fields),
        taken_at=time.time(),
        token=f"planted-{time.monotonic_ns()}",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / LOCK).write_text(json.dumps(holder.__dict__))
    return holder


def test_a_live_holder_is_refused_and_a_gone_one_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant(tmp_path, pid=sleeper.pid, started=process_start(sleeper.pid))
        with pytest.raises(InvalidInput, match=f"in use by another run \\(process {sleeper.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert note is not None and f"process {sleeper.pid} no longer exists" in note
    assert read_holder(tmp_path / LOCK).token == lock.holder.token
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_a_reused_process_id_is_not_the_holder(tmp_path):
    plant(tmp_path, pid=os.getpid(), started="1")  # our pid, but a process that started at another time
    lock = RunLock(tmp_path)
    assert "no longer exists" in lock.acquire()
    lock.release()


def test_a_holder_on_another_host_is_refused_with_its_heartbeat_and_how_to_clear_it(tmp_path):
    plant(tmp_path, host="elsewhere", pid=4242)
    os.utime(tmp_path / LOCK, (time.time() - 3600, time.time() - 3600))  # an hour without a heartbeat
    with pytest.raises(InvalidInput) as refused:
        RunLock(tmp_path).acquire()
    message = str(refused.value)
    assert "process 4242 on elsewhere" in message and "last heartbeat was 3600 s ago" in message
    assert f"delete {tmp_path / LOCK}" in message


def test_the_same_slurm_job_takes_its_lock_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    plant(tmp_path, host="elsewhere", pid=4242, slurm_job="777")
    lock = RunLock(tmp_path)
    assert "it was this SLURM job (777)" in lock.acquire()
    lock.release()
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # SLURM cannot be asked about another job
    plant(tmp_path, host="elsewhere", pid=4242, slurm_job="778")
    with pytest.raises(InvalidInput, match="SLURM job 778"):
        RunLock(tmp_path).acquire()


def test_the_heartbeat_touches_the_lock_while_it_is_held(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    os.utime(tmp_path / LOCK, (0, 0))
    time.sleep(0.5)
    assert time.time() - (tmp_path / LOCK).stat().st_mtime < 5
    lock.release()


def take(directory: str, start, results) -> None:
    start.wait()
    try:
        RunLock(Path(directory)).acquire()
        results.put("took")
        time.sleep(2)  # hold it while the others try
    except InvalidInput:
        results.put("refused")


@pytest.mark.parametrize("stale", [False, True])
def test_of_many_starts_at_once_exactly_one_takes_the_lock(tmp_path, stale):
    if stale:
        plant(tmp_path, pid=2**22 + 7)  # a killed run's lock: every start races to take it over
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    starts = [context.Process(target=take, args=(str(tmp_path), start, results)) for _ in range(8)]
    for process in starts:
        process.start()
    start.set()
    outcomes = sorted(results.get(timeout=60) for _ in starts)
    for process in starts:
        process.join()
    assert outcomes == ["refused"] * 7 + ["took"]


def train(out_dir: Path, data: Path, *extra: str) -> subprocess.Popen:
    """A training run in the background, its output in files beside ``out_dir`` (a pipe nobody reads
    would stop it once full)."""
    args = train_args(data, out_dir, "--max_steps", "400", "--eval_interval", "1000", "--save_interval", "50", *extra)
    log = out_dir.parent / f"{out_dir.name}-{time.monotonic_ns()}"
    with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
        run = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=stdout, stderr=stderr, text=True)
    run.logs = (Path(f"{log}.out"), Path(f"{log}.err"))
    return run


def output(run: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    run.wait(timeout=timeout)
    stdout, stderr = (path.read_text() for path in run.logs)
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)


def wait_for_lock(out_dir: Path, run: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not (out_dir / LOCK).exists():
        assert run.poll() is None and time.monotonic() < deadline, output(run)
        time.sleep(0.1)


@pytest.mark.parametrize("second", [[], ["--learning_rate", "3e-3"]], ids=["same command", "another recipe"])
def test_a_second_run_into_a_busy_out_dir_is_refused_before_it_touches_it(data, tmp_path, no_process_left, second):
    out_dir = tmp_path / "out"
    first = train(out_dir, data)
    wait_for_lock(out_dir, first)
    holder = read_holder(out_dir / LOCK)
    refused = output(train(out_dir, data, *second))
    assert_refused(refused, f"{out_dir} is in use by another run (process {holder.pid} on")
    trained = output(first)
    assert trained.returncode == 0, trained.stderr[-3000:]
    steps = [int(step) for step in metrics(out_dir, "train_loss")]
    assert steps == list(range(1, 401))  # one row per step: the refused run wrote nothing
    assert not (out_dir / LOCK).exists()


def test_a_killed_runs_lock_is_taken_over_and_the_run_resumes(data, tmp_path, no_process_left):
    out_dir = tmp_path / "out"
    first = train(out_dir, data)
    while not (out_dir / "step-00000050").exists():
        assert first.poll() is None, output(first)
        time.sleep(0.1)
    pid = read_holder(out_dir / LOCK).pid
    first.kill()
    first.wait()
    assert processes_with(str(out_dir)) == []
    second = subprocess.run(
        [sys.executable, str(SCRIPT), *train_args(data, out_dir, "--max_steps", "60", "--eval_interval", "1000")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"warning: took over the run lock {out_dir / LOCK} from process {pid} on" in second.stdout
    assert f"process {pid} no longer exists" in second.stdout and "Resumed from" in second.stdout


def test_a_run_inside_its_warmup_and_a_resume_behind_newer_checkpoints_are_told(data, tmp_path):
    out_dir = tmp_path / "out"
    args = train_args(data, out_dir, "--max_steps", "4", "--save_interval", "2", "--warmup_steps", "10")
    first = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "warning: --warmup_steps 10 is not shorter than the run's 4 steps" in first.stdout
    assert "never reaches --learning_rate 0.01" in first.stdout

    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--resume", str(out_dir / "step-00000002")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{out_dir} holds newer checkpoints (step-00000004); this run replaces each" in resumed.stdout
    assert "holds newer checkpoints" not in first.stdout
