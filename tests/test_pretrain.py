"""The training loop, run for real as a script: distributed equivalence, exact resume, guards."""

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gpt import GPT, Config
from lit_gpt.checkpoint import load_model_weights
from lit_gpt.data.shards import write_shard
from lit_gpt.schedule import Stage

from conftest import DEMO_TOKENIZER, REPO_ROOT, load_pretrain_script

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"
TINY = "{n_layer: 2, n_embd: 64, n_head: 4, n_query_groups: 2, intermediate_size: 128, block_size: 32}"


@pytest.fixture
def data(tmp_path) -> Path:
    """Two small random-token datasets and a validation set, 33-token blocks."""
    rng = np.random.default_rng(0)
    for name, shards in (("a", 3), ("b", 2), ("val", 1)):
        (tmp_path / name).mkdir()
        for i in range(shards):
            tokens = rng.integers(0, 4096, 33 * 64, dtype=np.uint16)
            write_shard(tmp_path / name / f"train_{name}_0_{i:010d}.bin", tokens)
    return tmp_path


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
        "--eval_iters",
        "2",
        "--save_interval",
        "100",
        "--num_workers",
        "0",
        *extra,
    ]


def run(args: list[str], launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-5000:])
    return result


def metrics(out_dir: Path, column: str) -> dict[int, str]:
    with open(out_dir / "metrics.csv", newline="") as f:
        return {int(row["step"]): row[column] for row in csv.DictReader(f) if row[column]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_losses_of_one_with_full_or_hybrid_sharding(data, tmp_path):
    single_data = data / "a"  # one source: both runs then see the same blocks in each global batch

    def args(out: Path, devices: str) -> list[str]:  # the whole validation set, whatever the world size
        one_source = f"[{{name: a, path: {single_data}}}]"
        return train_args(
            data, out, "--max_steps", "5", "--devices", devices, "--train_data", one_source, "--eval_iters", "100"
        )

    run(args(tmp_path / "one", "1"))
    one = metrics(tmp_path / "one", "train_loss")
    assert sorted(one) == [1, 2, 3, 4, 5]
    for name, extra in (("two", []), ("hybrid", ["--hybrid_sharding", "true"])):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        run(args(tmp_path / name, "2") + extra, launcher=[*torchrun, "--master_port", str(free_port())])
        two = metrics(tmp_path / name, "train_loss")
        assert sorted(two) == sorted(one)
        for step in one:
            assert abs(float(one[step]) - float(two[step])) <= 1e-5, (name, step, one[step], two[step])
        val_one, val_two = metrics(tmp_path / "one", "val_loss"), metrics(tmp_path / name, "val_loss")
        assert abs(float(val_one[5]) - float(val_two[5])) <= 1e-5
        assert sorted(p.name for p in (tmp_path / name).glob("step-*")) == ["step-00000005"]


def test_resume_after_kill_9_mid_checkpoint_is_bitwise_exact(data, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    extra = ["--max_steps", "10", "--save_interval", "2", "--keep_checkpoints", "2"]
    run(train_args(data, reference, *extra))

    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *train_args(data, resumed, *extra)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, caught = time.monotonic() + 300, None
    while caught is None and process.poll() is None and time.monotonic() < deadline:
        names = os.listdir(resumed) if resumed.exists() else []
        caught = next((n for n in names if n.startswith(".tmp-step-") and n >= ".tmp-step-00000006"), None)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert caught is not None, "the run was not caught while writing a checkpoint"
    complete = sorted(p.name for p in resumed.glob("step-*"))
    assert complete and complete[-1] < "step-00000010"
    resumed_from = int(complete[-1].split("-")[1])

    result = run(train_args(data, resumed, *extra, "--resume", "auto"))
    assert f"Resumed from {resumed / complete[-1]} at step {resumed_from}" in result.stdout
    expected, actual = metrics(reference, "train_loss"), metrics(resumed, "train_loss")
    assert sorted(actual) == list(range(1, 11))
    assert [actual[s] for s in range(resumed_from + 1, 11)] == [expected[s] for s in range(resumed_from + 1, 11)]
    assert metrics(resumed, "val_loss") == metrics(reference, "val_loss")
    assert sorted(p.name for p in resumed.iterdir() if p.name.startswith(("step-", ".tmp"))) == [
        "step-00000008",
        "step-00000010",
    ]


def test_stages_change_the_batch_size_at_the_right_steps(data, tmp_path):
    stages = "[{name: basic, tokens: 768}, {name: cooldown, tokens: 1024, global_batch_size: 16, weights: {b: 1.0}}]"
    run(train_args(data, tmp_path / "out", "--stages", stages, "--eval_interval", "100"))
    batch = metrics(tmp_path / "out", "global_batch_size")
    stage = metrics(tmp_path / "out", "stage")
    tokens = metrics(tmp_path / "out", "tokens")
    # basic: 768 tokens / (8 x 32) = 3 steps; cooldown: 1024 / (16 x 32) = 2 steps
    assert [batch[s] for s in range(1, 6)] == ["8", "8", "8", "16", "16"]
    assert [stage[s] for s in range(1, 6)] == ["basic", "basic", "basic", "cooldown", "cooldown"]
    assert [int(tokens[s]) for s in range(1, 6)] == [256, 512, 768, 1280, 1792]


def test_nonfinite_losses_skip_steps_then_abort(data, tmp_path):
    result = run(
        train_args(
            data,
            tmp_path / "out",
            "--max_steps",
            "20",
            "--learning_rate",
            "1e30",
            "--warmup_steps",
            "1",
            "--max_nonfinite_steps",
            "3",
        ),
        check=False,
    )
    assert result.returncode != 0
    assert "3 steps in a row had a non-finite loss or gradient norm" in result.stderr
    assert "step skipped" in result.stdout


def test_missing_data_directory_is_a_clear_startup_error(data, tmp_path):
    args = train_args(data, tmp_path / "out", "--max_steps", "2", "--val_data", str(tmp_path / "nope"))
    result = run(args, check=False)
    assert result.returncode != 0 and f"Dataset directory {tmp_path / 'nope'} does not exist" in result.stderr


def test_shards_of_another_tokenizer_are_refused(data, tmp_path):
    (data / "a" / "train_a_0.manifest.json").write_text('{"settings": {"tokenizer_sha256": "0123"}}')
    result = run(train_args(data, tmp_path / "out", "--max_steps", "2"), check=False)
    assert result.returncode != 0
    assert f"{data / 'a' / 'train_a_0.manifest.json'} records shards made with another tokenizer" in result.stderr


def test_startup_checks():
    script = load_pretrain_script()
    hparams = script.Hyperparameters(
        model_name="tiny_LLaMA_5M",
        train_data=[script.DataSource("a", Path("a"), 1.0)],
        max_tokens=None,
        max_steps=10,
        stages=None,
        global_batch_size=12,
        micro_batch_size=8,
        tokenizer_path=DEMO_TOKENIZER,
    )
    config = Config.from_name("tiny_LLaMA_5M")
    with pytest.raises(ValueError, match="global batch size 12 is not a multiple of world size 1 x micro-batch size 8"):
        script.stage_plan(hparams, config, world_size=1)
    hparams.global_batch_size = 16
    assert script.stage_plan(hparams, config, world_size=2).max_steps == 10
    hparams.stages = [Stage("s", tokens=100, global_batch_size=24)]
    with pytest.raises(ValueError, match="Stage 's': global batch size 24 is not a multiple of world size 2"):
        script.stage_plan(hparams, config, world_size=2)
    hparams.max_steps, hparams.stages = None, None
    with pytest.raises(ValueError, match="exactly one of --max_tokens and --max_steps"):
        script.stage_plan(hparams, config, world_size=1)
    with pytest.raises(ValueError, match="has 4096 tokens but model tiny_LLaMA_5M only 1000"):
        script.check_tokenizer(config.replace(vocab_size=1000), hparams)


@pytest.mark.slow
def test_cpu_demo_recipe_learns(tmp_path):
    """The demo recipe on the sample corpus: validation loss ends well below chance, ln(4096)."""
    run_demo(tmp_path)


def test_short_demo_run_learns(tmp_path):
    run_demo(tmp_path, "--max_steps", "60", "--eval_interval", "20", "--model_config", "{n_layer: 2}")


def run_demo(tmp_path: Path, *extra: str) -> None:
    sample = tmp_path / "sample"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_sample_corpus.py"), "--destination", str(sample)],
        check=True,
        capture_output=True,
    )
    prepare = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "prepare_slimpajama.py"),
        "--tokenizer_path",
        str(DEMO_TOKENIZER),
        "--chunk_size",
        "263168",
    ]
    for split in ("train", "validation"):
        subprocess.run(
            [
                *prepare,
                "--source_path",
                str(sample / "SlimPajama-627B"),
                "--split",
                split,
                "--destination_path",
                str(tmp_path / "slim" / split),
            ],
            check=True,
            capture_output=True,
        )
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "prepare_starcoder.py"),
            "--tokenizer_path",
            str(DEMO_TOKENIZER),
            "--chunk_size",
            "263168",
            "--source_path",
            str(sample / "starcoderdata"),
            "--destination_path",
            str(tmp_path / "star"),
        ],
        check=True,
        capture_output=True,
    )
    train_data = (
        f"[{{name: slimpajama, path: {tmp_path / 'slim' / 'train'}, weight: 0.693584}}, "
        f"{{name: starcoder, path: {tmp_path / 'star'}, weight: 0.306416}}]"
    )
    run(
        [
            "--config",
            str(REPO_ROOT / "pretrain" / "configs" / "cpu_demo.yaml"),
            "--train_data",
            train_data,
            "--val_data",
            str(tmp_path / "slim" / "validation"),
            "--tokenizer_path",
            str(DEMO_TOKENIZER),
            "--out_dir",
            str(tmp_path / "out"),
            *extra,
        ]
    )
    val = {step: float(loss) for step, loss in metrics(tmp_path / "out", "val_loss").items()}
    first, last = val[min(val)], val[max(val)]
    assert last < first and last < 0.75 * math.log(4096), val


def test_initial_checkpoint_starts_from_its_weights(data, tmp_path):
    from safetensors.torch import save_file

    config = Config.from_name(
        "tiny_LLaMA_5M", n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=128, block_size=32
    )
    initial = {name: torch.randn_like(t) * 0.05 for name, t in GPT(config).state_dict().items()}
    (tmp_path / "lit").mkdir()
    save_file(initial, tmp_path / "lit" / "model.safetensors")
    (tmp_path / "lit" / "model_config.json").write_text(json.dumps(config.to_dict()))
    args = train_args(
        data,
        tmp_path / "out",
        "--max_steps",
        "1",
        "--initial_checkpoint",
        str(tmp_path / "lit"),
        "--learning_rate",
        "0",
        "--min_lr",
        "0",
        "--warmup_steps",
        "1",
    )
    run(args)
    trained = load_model_weights(tmp_path / "out" / "step-00000001")  # learning rate 0: unchanged weights
    assert trained.keys() == initial.keys()
    assert all(torch.equal(trained[name], initial[name]) for name in initial)


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_optional_loggers_write_their_runs(data, tmp_path, monkeypatch, logger):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # wandb must then run offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(train_args(data, tmp_path / "out", "--max_steps", "2", "--logger", logger))
    if logger == "tensorboard":
        assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    else:
        runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
        assert runs and list(runs[0].glob("*.wandb"))
    assert sorted(metrics(tmp_path / "out", "train_loss")) == [1, 2]  # the CSV is written as well


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(data, tmp_path):
    for name, extra in (("eager", []), ("compiled", ["--compile", "true"])):
        run(train_args(data, tmp_path / name, "--max_steps", "3", *extra))
    eager, compiled = metrics(tmp_path / "eager", "train_loss"), metrics(tmp_path / "compiled", "train_loss")
    assert sorted(eager) == sorted(compiled) == [1, 2, 3]
    assert all(abs(float(eager[s]) - float(compiled[s])) < 1e-4 for s in eager)
