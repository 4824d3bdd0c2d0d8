"""Real SLURM: a two-node cluster started on this machine (tests/slurm_cluster.py). CI installs the
packages (.ci/run), so these tests run there; elsewhere they are skipped with the command that installs
them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from conftest import DEMO_TOKENIZER, REPO_ROOT, free_port, metrics, train_args
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
    lines = result.stdout.splitlines()
    for start in ("Model ", "Kernels: ", "Data: ", "step       1/4", "step       2 | validation", "Saved ", "Trained "):
        assert sum(line.startswith(start) for line in lines) == 1, (start, result.stdout[-3000:])


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
