import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gpt import Tokenizer, cli
from lit_gpt.data.index import index_directory
from lit_gpt.data.shards import read_shard, write_shard

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = REPO_ROOT / "assets" / "tokenizer" / "tokenizer.model"
DEMO_BPE_TOKENIZER = REPO_ROOT / "assets" / "tokenizer-bpe"  # tokenizer.json + tokenizer_config.json
TOKENIZER = Tokenizer(DEMO_TOKENIZER)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture(autouse=True)
def seed() -> None:
    """Every test draws the same random numbers on every run."""
    torch.manual_seed(0)


@pytest.fixture
def data(tmp_path) -> Path:
    """Two small random-token datasets and a validation set, 33-token blocks."""
    rng = np.random.default_rng(0)
    for name, shards in (("a", 3), ("b", 2), ("val", 1)):
        (tmp_path / name).mkdir()
        for i in range(shards):
            tokens = rng.integers(0, 4096, 33 * 64, dtype=np.uint16)
            write_shard(tmp_path / name / f"train_{name}_0_{i:010d}.bin", tokens)
        index_directory(tmp_path / name, tokenizer_path=DEMO_TOKENIZER)
    return tmp_path


def run_prepare(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "scripts" / script), "--tokenizer_path", str(DEMO_TOKENIZER), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


def shard_tokens(directory: Path) -> np.ndarray:
    return np.concatenate([read_shard(p) for p in sorted(directory.glob("*.bin"))])


def split_documents(tokens: np.ndarray, tokenizer: Tokenizer = TOKENIZER) -> list[list[int]]:
    """The token stream cut at each boundary token (BOS before, or EOS after, each document): one list per
    document, the boundary token dropped."""
    marks = np.flatnonzero(tokens == tokenizer.boundary.id)
    if tokenizer.boundary.position == "after":
        assert len(marks) and marks[-1] == len(tokens) - 1
        return [tokens[a + 1 : b].tolist() for a, b in zip([-1, *marks[:-1]], marks, strict=True)]
    assert marks[0] == 0
    return [tokens[a + 1 : b].tolist() for a, b in zip(marks, [*marks[1:], len(tokens)], strict=True)]


def load_script(relative_path: str):
    """A script of the repository (pretrain/, scripts/) as a module, to call its functions."""
    return cli.load_script(REPO_ROOT / relative_path)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """An expected error: exit status 2 and one ``error:`` line holding ``fragments``, no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def metrics(out_dir: Path, column: str) -> dict[int, str]:
    """One column of a run's metrics.csv by step, where the step logged it (as written: exact)."""
    with open(out_dir / "metrics.csv", newline="") as f:
        return {int(row["step"]): row[column] for row in csv.DictReader(f) if row[column]}


def torchrun(processes: int, *extra: str) -> list[str]:
    """The torchrun launcher for ``processes`` workers on a free port (``extra``: more torchrun options)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    return [*launcher, "--master_port", str(free_port()), *extra]


def processes_with(marker: str, launchers: bool = True) -> list[int]:
    """The process ids of ours whose command line holds ``marker`` (without torchrun's, if not ``launchers``)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # it ended meanwhile
        if marker.encode() in command and (launchers or b"torch.distributed.run" not in command):
            found.append(int(entry.name))
    return sorted(found)


def free_port() -> int:
    """A TCP port nobody listens on now, for a torchrun rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_OVERRIDES = dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=128, block_size=32)
TINY = "{" + ", ".join(f"{key}: {value}" for key, value in TINY_OVERRIDES.items()) + "}"  # as --model_config


def train_args(data: Path, out_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name",
        "tiny_LLaMA_5M",
        "--model_config",
        TINY,
        "--out_dir",
        str(out_dir),
        "--train_data",
        f"[{{name: a, path: {data / 'a'}, weight: 0.7}}, {{name: b, path: {data / 'b'}, weight: 0.3}}]",
        "--val_data",
        str(data / "val"),
        "--tokenizer_path",
        str(DEMO_TOKENIZER),
        "--precision",
        "32-true",
        "--global_batch_size",
        "8",
        "--micro_batch_size",
        "2",
        "--learning_rate",
        "1e-2",
        "--min_lr",
        "1e-3",
        "--warmup_steps",
        "2",
        "--log_interval",
        "1",
        "--eval_interval",
        "4",
        "--eval_blocks",
        "4",
        "--save_interval",
        "100",
        "--num_workers",
        "0",
        *extra,
    ]


@pytest.fixture
def no_process_left(tmp_path):
    """Whatever a test started (its command lines name its tmp_path) is killed by process id at the end,
    also when the test failed half-way or left a process stopped."""
    yield
    for pid in processes_with(str(tmp_path)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended meanwhile
