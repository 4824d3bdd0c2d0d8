"""The life of a run around its jobs, for real: signals (Ctrl-C, torchrun's SIGTERM, SLURM's SIGUSR1 to
one rank), a rank that stops, a restart loop, and launches that disagree with the settings."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, metrics, processes_with, torchrun, train_args

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"
LONG = ["--max_steps", "300", "--eval_interval", "1000", "--save_interval", "1000"]


pytestmark = pytest.mark.usefixtures("no_process_left")


def start(args: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    command = [*(launcher or [sys.executable]), str(SCRIPT), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def losses(out_dir: Path) -> dict[int, str]:
    return metrics(out_dir, "train_loss")


def wait_for_step(out_dir: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if max(losses(out_dir), default=0) >= step:
                return
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the run did not reach step {step}")


def workers(marker: str) -> list[int]:
    """The training processes (not the launcher) whose command line holds ``marker``, by pid."""
    return processes_with(marker, launchers=False)


def stopped_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Stopped at step")]


def reference_losses(data: Path, out_dir: Path, devices: int = 1) -> dict[int, str]:
    launcher = torchrun(devices) if devices > 1 else [sys.executable]
    command = [*launcher, str(SCRIPT), *train_args(data, out_dir, *LONG, "--devices", str(devices))]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return losses(out_dir)


def test_ctrl_c_saves_says_one_line_and_the_run_resumes_exactly(data, tmp_path):
    expected = reference_losses(data, tmp_path / "reference")
    out = tmp_path / "out"
    process = start(train_args(data, out, *LONG))
    wait_for_step(out, 5, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    (line,) = stopped_lines(stdout)
    step = int(line.split()[3].replace(",", ""))
    assert 5 <= step < 300 and f"on SIGINT: saved {out / f'step-{step:08d}'}" in line
    assert (out / f"step-{step:08d}" / "meta.pt").is_file()
    resumed = start(train_args(data, out, *LONG))
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert f"at step {step}" in stdout
    assert losses(out) == expected  # bitwise: the steps before the signal, and those after the resume


def test_sigterm_to_torchrun_saves_at_the_step_reached_and_resumes_exactly(data, tmp_path):
    expected = reference_losses(data, tmp_path / "reference", devices=2)
    out = tmp_path / "out"
    process = start(train_args(data, out, *LONG, "--devices", "2"), launcher=torchrun(2))
    wait_for_step(out, 5, process)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers
    stdout, _ = process.communicate(timeout=120)
    (line,) = stopped_lines(stdout)  # one voice: rank 0's line only
    step = int(line.split()[3].replace(",", ""))
    assert "on SIGTERM" in line and len(list((out / f"step-{step:08d}").glob("*.distcp"))) == 2
    resumed = start(train_args(data, out, *LONG, "--devices", "2"), launcher=torchrun(2))
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert losses(out) == expected


def test_sigusr1_to_one_rank_stops_every_rank_at_the_same_step(data, tmp_path):
    out = tmp_path / "out"
    process = start(train_args(data, out, *LONG, "--devices", "2"), launcher=torchrun(2))
    wait_for_step(out, 3, process)
    ranks = workers(str(out))
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGUSR1)
    stdout, stderr = process.communicate(timeout=120)
    (line,) = stopped_lines(stdout)
    step = int(line.split()[3].replace(",", ""))
    assert "on SIGUSR1" in line, line
    assert "exitcode  : 138" in stderr  # torchrun's report of the workers' status (128 + SIGUSR1)
    checkpoints = sorted(p.name for p in out.glob("step-*"))
    assert checkpoints == [f"step-{step:08d}"] and len(list((out / checkpoints[0]).glob("*.distcp"))) == 2
    assert max(losses(out)) == step


def test_a_stopped_rank_ends_the_job_within_the_collective_timeout(data, tmp_path):
    out = tmp_path / "out"
    args = train_args(data, out, *LONG, "--devices", "2", "--collective_timeout", "5")
    process = start(args, launcher=torchrun(2))
    wait_for_step(out, 3, process)
    os.kill(workers(str(out))[1], signal.SIGSTOP)  # no_process_left kills it if the launcher does not
    started = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert process.returncode != 0
    lines = [line for line in stderr.splitlines() if "a collective operation timed out" in line]
    assert lines and lines[0].startswith("rank 0: step "), stderr[-3000:]
    assert elapsed < 5 + 45, elapsed  # the timeout, and torchrun's grace before it kills the stopped rank


def test_a_run_that_fails_at_the_same_step_stops_restarting(data, tmp_path):
    """A learning rate that overflows fails each start at the same step (after --max_nonfinite_steps 1);
    torchrun restarts it from the step-0 checkpoint until the restart budget says stop."""
    out = tmp_path / "out"
    failing = ["--max_steps", "50", "--learning_rate", "1e30", "--max_nonfinite_steps", "1", "--save_initial", "true"]
    command = [*torchrun(1, "--max-restarts", "5"), str(SCRIPT), *train_args(data, out, *failing)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert result.stdout.count("Resumed from") == 3, result.stdout[-3000:]  # restarts 1-3; 4 and 5 are refused
    refusals = [line for line in result.stderr.splitlines() if "was restarted 3 times from step-00000000" in line]
    assert len(refusals) == 2, result.stderr[-3000:]
    assert result.stderr.count("non-finite") >= 4  # the first start and three restarts failed alike


def test_a_launch_on_other_nodes_than_the_settings_is_refused(data, tmp_path):
    command = [*torchrun(2), str(SCRIPT), *train_args(data, tmp_path / "out", *LONG, "--num_nodes", "2")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-3000:]
    assert "--num_nodes 2, but torchrun started processes on 1 node(s)" in lines[0]
