"""A full disk and a read-only out_dir, on real filesystems: a small tmpfs mounted for the test (as root,
which CI is; skipped with the reason elsewhere). A write that fails in the middle of a tensor file (after
the free-space check passed): a file-size limit. What an interrupted save leaves is removed at the next start."""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, assert_refused, metrics, torchrun, train_args

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


def train(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    launcher = torchrun(processes) if processes > 1 else [sys.executable]
    return subprocess.run([*launcher, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def losses(out_dir: Path) -> dict[int, str]:
    return metrics(out_dir, "train_loss")


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture
def mount(tmp_path):
    """mount(size_bytes) -> a fresh tmpfs of that size; unmounted at the end."""
    mounted = []

    def make(size: int) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


@needs_root
@pytest.mark.parametrize("processes", [1, 2])
def test_a_disk_that_fills_at_the_second_checkpoint_is_one_line_and_the_first_resumes(data, tmp_path, mount, processes):
    extra = ["--max_steps", "4", "--save_interval", "2", "--eval_interval", "100", "--devices", str(processes)]
    reference = tmp_path / "reference"
    assert train(train_args(data, reference, *extra), processes).returncode == 0
    checkpoint_bytes = directory_bytes(reference / "step-00000002")
    disk = mount(int(checkpoint_bytes * 1.5))  # room for one checkpoint and the logs, not for two
    result = train(train_args(data, disk / "out", *extra), processes)
    if processes == 1:
        assert_refused(result, "No space left", "step-00000004", "needs about", "are free", "step-00000002, is intact")
    else:  # torchrun adds its own report of the failed workers; our line is there once
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode != 0 and len(lines) == 1 and "No space left" in lines[0], result.stderr[-3000:]
        assert "enforce fail" not in result.stderr
    assert sorted(p.name for p in (disk / "out").iterdir() if "step-" in p.name) == ["step-00000002"]

    moved = tmp_path / "moved"  # the intact checkpoint, resumed where there is room
    shutil.copytree(disk / "out" / "step-00000002", moved / "step-00000002")
    assert train(train_args(data, moved, *extra, "--resume", "auto"), processes).returncode == 0
    assert losses(moved) == {step: loss for step, loss in losses(reference).items() if step > 2}


@needs_root
def test_a_read_only_out_dir_is_refused_before_anything_is_loaded(data, tmp_path, mount):
    disk = mount(64 * 2**20)
    extra = ["--max_steps", "2", "--save_interval", "2", "--eval_interval", "100"]
    assert train(train_args(data, disk / "out", *extra)).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    result = train(train_args(data, disk / "out", "--max_steps", "4", "--save_interval", "2", "--eval_interval", "100"))
    assert_refused(result, f"--out_dir {disk / 'out'} cannot be written", "Read-only file system")
    assert "Resumed" not in result.stdout and "Model" not in result.stdout


def file_size_limit(limit: int):
    """For ``preexec_fn``: writes past ``limit`` bytes fail with EFBIG, as a quota or a full disk fails a
    write in the middle of a file (SIGXFSZ, which would kill the process instead, is ignored)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def worker_exit_codes(torchrun_output: str) -> list[int]:
    """The exit codes that torchrun's failure report gives for its workers."""
    return [int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+)", torchrun_output)]


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("background", ["false", "true"])
def test_a_write_that_fails_mid_tensor_is_one_line_and_the_newest_checkpoint_resumes(
    data, tmp_path, processes, background
):
    extra = ["--save_interval", "2", "--eval_interval", "100", "--devices", str(processes)]
    extra += ["--async_checkpoint", background]
    reference = tmp_path / "reference"
    assert train(train_args(data, reference, "--max_steps", "4", *extra), processes).returncode == 0
    assert directory_bytes(reference / "step-00000004") > 2**20  # the limit below cuts the tensor files
    out_dir = tmp_path / "out"
    assert train(train_args(data, out_dir, "--max_steps", "2", *extra), processes).returncode == 0

    launcher = torchrun(processes) if processes > 1 else [sys.executable]
    command = [*launcher, str(SCRIPT), *train_args(data, out_dir, "--max_steps", "4", *extra)]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=600, preexec_fn=file_size_limit(2**20))
    lines = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, failed.stderr[-3000:]
    assert f"Cannot write checkpoint {out_dir / 'step-00000004'}: a write was cut short" in lines[0]
    assert "the newest complete one, step-00000002, is intact" in lines[0]
    if processes == 1:
        assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    else:  # torchrun reports its failed workers (exit status 1); each worker exited with 2, without a traceback
        assert failed.returncode == 1 and set(worker_exit_codes(failed.stderr)) == {2}, failed.stderr[-3000:]
        assert not re.search(r"\[rank\d+\]:", failed.stderr), failed.stderr[-3000:]
    assert sorted(path.name for path in out_dir.iterdir() if "step-" in path.name) == ["step-00000002"]

    resumed = train(train_args(data, out_dir, "--max_steps", "4", *extra), processes)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {step: loss for step, loss in losses(out_dir).items() if step > 2} == {
        step: loss for step, loss in losses(reference).items() if step > 2
    }


def test_a_partial_checkpoint_of_a_killed_run_is_removed_at_the_next_start(data, tmp_path):
    out_dir = tmp_path / "out"
    extra = ["--save_interval", "2", "--eval_interval", "100"]
    assert train(train_args(data, out_dir, "--max_steps", "2", *extra)).returncode == 0
    (out_dir / ".tmp-step-00000004").mkdir()  # as a kill -9 during a save leaves it
    (out_dir / ".tmp-step-00000004" / "__0_0.distcp").write_bytes(b"half")
    (out_dir / ".metrics.csv.tmp").write_text("half")
    resumed = train(train_args(data, out_dir, "--max_steps", "4", *extra))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Removed {out_dir / '.tmp-step-00000004'}, left half-written by an interrupted run" in resumed.stdout
    assert not [path.name for path in out_dir.iterdir() if path.name.startswith(".")]
    assert (out_dir / "step-00000004").is_dir()
