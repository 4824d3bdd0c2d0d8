"""The life of a run around its jobs, for real: signals (Ctrl-C, torchrun's SIGTERM, SLURM's SIGUSR1 to
one rank), a rank that stops, a restart loop, and launches that disagree with the settings."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, free_port, metrics, processes_with, torchrun, train_args

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"
LONG = ["--max_steps", "300", "--eval_interval", "1000", "--save_interval", "1000"]
RESUMES = "the same command resumes from there (--resume auto)"


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


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (the SigCgt mask of /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signum - 1) & 1)


def test_sigusr1_during_the_start_up_stops_after_the_first_step(data, tmp_path):
    """SLURM's USR1 reaching a rank that still waits for the others to join the process group neither
    kills it (the default action) nor is lost: the run trains its first step, saves and stops. The two
    ranks are started by hand, as torchrun would, so that rank 0 waits in the rendezvous until told."""
    out = tmp_path / "out"
    common = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    common |= {"LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0", "TORCHELASTIC_RUN_ID": "by-hand"}
    command = [sys.executable, str(SCRIPT), *train_args(data, out, *LONG, "--devices", "2")]

    def rank(number: int) -> subprocess.Popen:
        environment = common | {"RANK": str(number), "LOCAL_RANK": str(number)}
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)

    first = rank(0)
    deadline = time.monotonic() + 120
    while not catches(first.pid, signal.SIGUSR1):
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()  # it would wait in the rendezvous for the whole start-up timeout
            raise AssertionError(f"rank 0 did not catch SIGUSR1 in its start-up: {first.communicate()[1][-3000:]}")
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGUSR1)  # alone, rank 0 cannot have left the rendezvous: it is in the start-up
    time.sleep(1)
    assert first.poll() is None and not (out / "metrics.csv").exists()
    second = rank(1)
    stdout, stderr = first.communicate(timeout=600)
    second.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    assert stopped_lines(stdout) == [f"Stopped at step 1 on SIGUSR1: saved {out / 'step-00000001'}; " + RESUMES]
    assert sorted(losses(out)) == [1] and len(list((out / "step-00000001").glob("*.distcp"))) == 2
