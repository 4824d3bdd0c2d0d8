"""Real SLURM: a two-node cluster started on this machine (tests/slurm_cluster.py). CI installs the
packages (.ci/run), so these tests run there; elsewhere they are skipped with the command that installs
them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from conftest import DEMO_TOKENIZER, REPO_ROOT, free_port, metrics, torchrun, train_args
from slurm_cluster import INSTALL, SlurmCluster, missing

pytestmark = pytest.mark.skipif(bool(missing()), reason=f"needs SLURM and munge: {INSTALL} (as root)")
SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    slurm.start()
    yield slurm
    slurm.stop()


def losses(out_dir: Path) -> dict[int, float]:
    return {step: float(loss) for step, loss in metrics(out_dir, "train_loss").items()}


def test_two_nodes_train_like_one_process_and_speak_once(cluster, data, tmp_path):
    extra = ["--max_steps", "4", "--eval_interval", "2", "--devices", "1"]
    subprocess.run([sys.executable, str(SCRIPT), *train_args(data, tmp_path / "one", *extra)], check=True)
    args = train_args(data, tmp_path / "two", *extra, "--num_nodes", "2", "--hybrid_sharding", "true")
    command = ["srun", "-N2", "--ntasks-per-node", "1", sys.executable, str(SCRIPT), *args]
    environment = cluster.environment() | {"MASTER_PORT": str(free_port())}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4] and all(abs(one[step] - two[step]) <= 1e-5 for step in one)
    lines = (result.stdout + result.stderr).splitlines()
    starts = (
        "Initializing distributed",
        "Model ",
        "Kernels: ",
        "Data: ",
        "step       1/4",
        "step       2 | validation",
    )
    for start in (*starts, "Saved ", "Trained "):
        assert sum(line.startswith(start) for line in lines) == 1, (start, result.stdout[-3000:])
    assert not any(line.startswith("[rank: 1]") for line in lines), result.stderr[-3000:]


def test_a_launch_on_other_nodes_than_the_settings_is_refused(cluster, data, tmp_path):
    args = train_args(data, tmp_path / "out", "--max_steps", "2", "--devices", "1", "--num_nodes", "1")
    command = ["srun", "-N2", "--ntasks-per-node", "1", sys.executable, str(SCRIPT), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=cluster.environment(), timeout=600)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "--num_nodes 1, but srun started processes on 2 node(s)" in lines[0], result.stderr


def write_corpus(root: Path, files: int = 4) -> None:
    """A few SlimPajama-style jsonl.zst files (one of them of the excluded GitHub set)."""
    (root / "train" / "chunk1").mkdir(parents=True)
    for i in range(files):
        documents = [
            {
                "text": f"Document {i}.{j}: " + "the quick brown fox jumps " * (5 + j),
                "meta": {"redpajama_set_name": "X"},
            }
            for j in range(40)
        ]
        lines = "".join(json.dumps(document) + "\n" for document in documents).encode()
        (root / "train" / "chunk1" / f"example_train_{i}.jsonl.zst").write_bytes(
            zstandard.ZstdCompressor().compress(lines)
        )


def test_preparation_as_an_array_job_writes_what_the_same_jobs_write_locally(cluster, tmp_path):
    write_corpus(tmp_path / "corpus")
    common = [
        "--source_path",
        str(tmp_path / "corpus"),
        "--tokenizer_path",
        str(DEMO_TOKENIZER),
        "--chunk_size",
        "2049",
    ]
    for index in (0, 1):
        command = [sys.executable, str(REPO_ROOT / "scripts" / "prepare_slimpajama.py"), *common]
        command += ["--destination_path", str(tmp_path / "local"), "--num_shards", "2", "--shard_index", str(index)]
        subprocess.run(command, check=True, capture_output=True, timeout=600)
    environment = cluster.environment() | {
        "SCRIPT": "prepare_slimpajama.py",
        "SOURCE": str(tmp_path / "corpus"),
        "DEST": str(tmp_path / "array"),
        "TOKENIZER": str(DEMO_TOKENIZER),
        "EXTRA_ARGS": "--chunk_size 2049",
    }
    command = ["sbatch", "--wait", "--array", "0-1", "--cpus-per-task", "1", "--output", str(tmp_path / "%A_%a.out")]
    command += [str(REPO_ROOT / "scripts" / "slurm" / "prepare.sbatch")]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=600)
    logs = {path.name: path.read_text()[-1000:] for path in tmp_path.glob("*.out")}
    assert result.returncode == 0, (result.stderr, logs)
    local = {path.name: path.read_bytes() for path in (tmp_path / "local").iterdir()}
    array = {path.name: path.read_bytes() for path in (tmp_path / "array").iterdir()}
    assert any(name.endswith(".bin") for name in local) and any(".index.json" in name for name in local)
    assert sorted(array) == sorted(local) and array == local


def job_field(cluster: SlurmCluster, job: str, field: str) -> str:
    """One field of ``scontrol show job`` (JobState, Restarts, ...)."""
    shown = subprocess.run(
        ["scontrol", "show", "job", job], capture_output=True, text=True, env=cluster.environment(), timeout=60
    ).stdout
    return next((word.split("=", 1)[1] for word in shown.split() if word.startswith(f"{field}=")), "")


def wait_for(cluster: SlurmCluster, job: str, ready, timeout: float, log: Path) -> None:
    """Poll until ``ready()``; a job that ended otherwise, or a timeout, fails with the job's log."""
    deadline = time.monotonic() + timeout
    while not ready():
        state = job_field(cluster, job, "JobState")
        if time.monotonic() > deadline or state in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL"):
            raise AssertionError(f"job {job} is {state}: {log.read_text()[-3000:] if log.exists() else ''}")
        time.sleep(2)


def test_a_time_limit_saves_requeues_and_the_chain_trains_like_one_run(cluster, data, tmp_path, no_process_left):
    """The template under a two-minute limit, USR1 30 s before it: the first job stops after a step with a
    checkpoint and requeues itself, the requeued job (given time to finish) resumes, and the chain's
    losses are the uninterrupted run's, bit for bit. SLURM checks its warning times every 30 s or so and
    may send the signal up to a minute early: here between 30 and 90 s into the job (with a one-minute
    limit it came 2 s in, before the training processes had started), so the run is long enough to
    outlast 90 s."""
    steps = "4000"
    args = train_args(data, tmp_path / "chain", "--max_steps", steps, "--eval_interval", "500")
    options = dict(zip(args[::2], args[1::2], strict=True))
    recipe = tmp_path / "recipe.yaml"  # the structured options; the template passes the rest on as words
    recipe.write_text("".join(f"{key[2:]}: {options.pop(key)}\n" for key in ("--train_data", "--model_config")))
    environment = cluster.environment() | {
        "RECIPE": str(recipe),
        "EXTRA_ARGS": " ".join(f"{key} {value}" for key, value in options.items()),
        "MASTER_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    log = tmp_path / "chain.out"
    command = ["sbatch", "--parsable", "--nodes", "2", "--ntasks-per-node", "1", "--cpus-per-task", "1"]
    command += ["--gpus-per-node", "0", "--time", "2", "--signal", "B:USR1@30", "--output", str(log)]
    submitted = subprocess.run(
        [*command, str(REPO_ROOT / "scripts" / "slurm" / "pretrain.sbatch")],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    requeued = lambda: job_field(cluster, job, "Restarts") == "1" and job_field(cluster, job, "JobState") == "PENDING"  # noqa: E731
    wait_for(cluster, job, requeued, 240, log)
    # As if the first job's rank 0 had been killed holding the run lock, on a node this one cannot look
    # into: the requeued job (the same SLURM job) takes its own lock back, saying so.
    planted = {"host": "a-lost-node", "pid": 1, "started": "", "slurm_job": job, "taken_at": time.time(), "token": "x"}
    (tmp_path / "chain" / "run.lock").write_text(json.dumps(planted))
    # SLURM holds a requeued job for about two minutes: let the second job run to the end (a chain of two
    # jobs) and train the uninterrupted run meanwhile, with the same two processes.
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True, env=environment, timeout=60)
    reference = train_args(
        data, tmp_path / "reference", "--max_steps", steps, "--eval_interval", "500", "--devices", "2"
    )
    subprocess.run([*torchrun(2), str(SCRIPT), *reference], check=True, capture_output=True, timeout=600)
    wait_for(cluster, job, lambda: job_field(cluster, job, "JobState") == "COMPLETED", 600, log)
    output = log.read_text()
    stopped = [line for line in output.splitlines() if line.startswith("Stopped at step ")]
    assert len(stopped) == 1 and "on SIGUSR1" in stopped[0] and f"requeued SLURM job {job}" in stopped[0], output
    assert f"took over the run lock {tmp_path / 'chain' / 'run.lock'}" in output, output
    assert f"it was this SLURM job ({job}) before its requeue or restart" in output, output
    assert not (tmp_path / "chain" / "run.lock").exists()  # released at the end
    stop_step = int(stopped[0].split()[3].replace(",", ""))
    assert 0 < stop_step < int(steps)
    chain, uninterrupted = metrics(tmp_path / "chain", "train_loss"), metrics(tmp_path / "reference", "train_loss")
    assert sorted(chain) == list(range(1, int(steps) + 1)) and chain == uninterrupted
