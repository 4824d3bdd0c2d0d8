"""The training loop, run for real as a script: distributed equivalence, exact resume, guards."""

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gpt import GPT, Config, kernels
from lit_gpt.data.index import index_directory
from lit_gpt.data.loader import create_loader
from lit_gpt.data.run_loaders import check_tokenizer
from lit_gpt.data.shards import read_shard, write_shard
from lit_gpt.run import DataSource, RunConfig
from lit_gpt.schedule import Stage
from lit_gpt.weights import load_model_weights

from conftest import (
    DEMO_BPE_TOKENIZER,
    DEMO_TOKENIZER,
    REPO_ROOT,
    TINY_OVERRIDES,
    TOKENIZER,
    assert_refused,
    metrics,
    processes_with,
    torchrun,
    train_args,
)

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"


def run(args: list[str], launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-5000:])
    return result


def assert_same_losses(expected: dict[int, str], actual: dict[int, str], steps: list[int], what: str) -> None:
    for step in steps:
        assert abs(float(expected[step]) - float(actual[step])) <= 1e-5, (what, step, expected[step], actual[step])


def test_any_number_of_processes_trains_on_the_same_data_and_resumes_on_another(data, tmp_path):
    """With the 0.7/0.3 mixture: 2 processes (full or hybrid sharding) give the losses of 1, and a checkpoint
    written by 2 processes resumes on 1 and on 4 with the losses of the uninterrupted run."""

    def args(out: Path, devices: int, *extra: str) -> list[str]:  # the whole validation set, whatever the world
        return train_args(data, out, "--max_steps", "6", "--devices", str(devices), "--eval_blocks", "1000", *extra)

    run(args(tmp_path / "one", 1))
    one = metrics(tmp_path / "one", "train_loss")
    assert sorted(one) == [1, 2, 3, 4, 5, 6]
    for name, extra in (("two", ["--save_interval", "3"]), ("hybrid", ["--hybrid_sharding", "true"])):
        run(args(tmp_path / name, 2, *extra), launcher=torchrun(2))
        assert sorted(metrics(tmp_path / name, "train_loss")) == sorted(one)
        assert_same_losses(one, metrics(tmp_path / name, "train_loss"), list(one), name)
        assert_same_losses(metrics(tmp_path / "one", "val_loss"), metrics(tmp_path / name, "val_loss"), [4, 6], name)
    assert sorted(p.name for p in (tmp_path / "two").glob("step-*")) == ["step-00000003", "step-00000006"]

    for devices in (1, 4):
        out = tmp_path / f"resumed_on_{devices}"
        launcher = torchrun(devices) if devices > 1 else None
        result = run(args(out, devices, "--resume", str(tmp_path / "two" / "step-00000003")), launcher=launcher)
        assert "Resumed from" in result.stdout and "at step 3" in result.stdout
        resumed = metrics(out, "train_loss")
        assert sorted(resumed) == [4, 5, 6]
        assert_same_losses(one, resumed, [4, 5, 6], f"resumed on {devices}")


@pytest.mark.parametrize(
    "mode,processes", [("sync", 1), ("async", 1), ("async", 2)], ids=["sync", "async", "async-torchrun-2"]
)
def test_resume_after_kill_9_mid_checkpoint_is_bitwise_exact(data, tmp_path, mode, processes):
    """Killed while a checkpoint is being written (in the foreground, or in the background while training
    goes on), the run resumes from the newest complete one with the losses of an uninterrupted run, which
    asynchronous saving does not change either."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    extra = ["--max_steps", "10", "--save_interval", "2", "--keep_checkpoints", "2", "--devices", str(processes)]
    launcher = torchrun(processes) if processes > 1 else [sys.executable]
    run(train_args(data, reference, *extra), launcher=launcher)
    extra += ["--async_checkpoint", "true"] if mode == "async" else []

    process = subprocess.Popen(
        [*launcher, str(SCRIPT), *train_args(data, resumed, *extra)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, caught = time.monotonic() + 300, None
    while caught is None and process.poll() is None and time.monotonic() < deadline:
        names = os.listdir(resumed) if resumed.exists() else []
        caught = next((n for n in names if n.startswith(".tmp-step-") and n >= ".tmp-step-00000006"), None)
    kill_9(str(resumed))  # torchrun and its workers, which run in sessions of their own
    process.wait()
    assert caught is not None, "the run was not caught while writing a checkpoint"
    complete = sorted(p.name for p in resumed.glob("step-*"))
    assert complete and complete[-1] < "step-00000010"
    resumed_from = int(complete[-1].split("-")[1])

    result = run(train_args(data, resumed, *extra, "--resume", "auto"), launcher=launcher)
    assert f"Resumed from {resumed / complete[-1]} at step {resumed_from}" in result.stdout
    expected, actual = metrics(reference, "train_loss"), metrics(resumed, "train_loss")
    assert sorted(actual) == list(range(1, 11))
    assert actual == expected  # the steps before the kill, and those after the resume
    assert metrics(resumed, "val_loss") == metrics(reference, "val_loss")
    assert sorted(p.name for p in resumed.iterdir() if p.name.startswith(("step-", ".tmp"))) == [
        "step-00000008",
        "step-00000010",
    ]


def kill_9(marker: str) -> None:
    """SIGKILL every process of ours whose command line holds ``marker``."""
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended meanwhile


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
    assert_refused(result)
    assert "3 steps in a row had a non-finite loss or gradient norm" in result.stderr
    assert "step skipped" in result.stdout


def test_missing_data_directory_is_a_clear_startup_error(data, tmp_path):
    args = train_args(data, tmp_path / "out", "--max_steps", "2", "--val_data", str(tmp_path / "nope"))
    result = run(args, check=False)
    assert result.returncode != 0 and f"Dataset directory {tmp_path / 'nope'} does not exist" in result.stderr
    assert_refused(result)


def other_tokenizers_index(directory: Path, name: str, **other: object) -> None:
    """An index file in ``directory`` that lists its shards as made by another tokenizer."""
    index = json.loads((directory / "index.json").read_text())
    (directory / name).write_text(json.dumps(index | (other or {"tokenizer_sha256": "f" * 64})))


@pytest.mark.parametrize("other", ["tokenizer", "boundary"])
def test_shards_of_another_tokenizer_are_refused(data, tmp_path, other):
    """Another tokenizer file, or the same one with another document boundary (its tokenizer_config.json
    names other special tokens): refused in one line naming both."""
    eos_after = {"token": "</s>", "id": 2, "position": "after"}
    change = {"tokenizer_sha256": "f" * 64} if other == "tokenizer" else {"boundary": eos_after}
    other_tokenizers_index(data / "a", "index.json", **change)
    result = run(train_args(data, tmp_path / "out", "--max_steps", "2"), check=False)
    recorded = "sha256 ffffffffffff, <s>" if other == "tokenizer" else f"sha256 {TOKENIZER.sha256[:12]}, </s> after"
    ours = f"{DEMO_TOKENIZER} (sha256 {TOKENIZER.sha256[:12]}, <s> before each document)"
    assert_refused(
        result, f"{data / 'a' / 'index.json'} records shards made with another tokenizer ({recorded}", f"than {ours}"
    )


@pytest.mark.parametrize("tokenizer", ["given", "not given"])
def test_index_files_of_two_tokenizers_in_one_directory_are_refused(data, tmp_path, tokenizer):
    other_tokenizers_index(data / "a", "train_a_1.index.json")
    extra = ["--tokenizer_path", "null"] if tokenizer == "not given" else []
    result = run(train_args(data, tmp_path / "out", "--max_steps", "2", *extra), check=False)
    assert_refused(result, "index files of two tokenizers", "index.json", "train_a_1.index.json")


def damage(directory: Path, case: str) -> Path:
    """One shard of ``directory`` spoiled as ``case`` says; returns it."""
    shard = directory / "train_a_0_0000000001.bin"
    size = shard.stat().st_size
    rng = np.random.default_rng(5)
    if case == "truncated":
        os.truncate(shard, size - 100)
    elif case == "bad header":
        shard.write_bytes(b"NOTPKDS" + shard.read_bytes()[7:])
    elif case == "resized after indexing":
        write_shard(shard, rng.integers(0, 4096, 33 * 10, dtype=np.uint16))
    elif case == "replaced, same size":
        write_shard(shard, rng.integers(0, 4096, 33 * 64, dtype=np.uint16))
    elif case == "replaced, same size, outside the vocabulary":
        write_shard(shard, rng.integers(4096, 5000, 33 * 64, dtype=np.uint16))
    elif case == "unindexed, outside the vocabulary":
        (directory / "index.json").unlink()
        write_shard(shard, rng.integers(4096, 5000, 33 * 64, dtype=np.uint16))
    return shard


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "bad header",
        "resized after indexing",
        "replaced, same size",
        "replaced, same size, outside the vocabulary",
        "unindexed, outside the vocabulary",
    ],
)
def test_a_bad_shard_read_by_dataloader_workers_is_one_line_naming_it(data, tmp_path, case):
    shard = damage(data / "a", case)
    result = run(train_args(data, tmp_path / "out", "--max_steps", "8", "--num_workers", "2"), check=False)
    assert_refused(result, str(shard))
    assert "DataLoader worker" not in result.stderr


def test_startup_checks():
    hparams = RunConfig(
        model_name="tiny_LLaMA_5M",
        train_data=[DataSource("a", Path("a"), 1.0)],
        max_tokens=None,
        max_steps=10,
        stages=None,
        global_batch_size=12,
        micro_batch_size=8,
        tokenizer_path=DEMO_TOKENIZER,
    )
    config = Config.from_name("tiny_LLaMA_5M")
    with pytest.raises(ValueError, match="global batch size 12 is not a multiple of world size 1 x micro-batch size 8"):
        hparams.stage_plan(config, world_size=1)
    hparams = replace(hparams, global_batch_size=16)
    assert hparams.stage_plan(config, world_size=2).max_steps == 10
    hparams = replace(hparams, stages=[Stage("s", tokens=100, global_batch_size=24)])
    with pytest.raises(ValueError, match="Stage 's': global batch size 24 is not a multiple of world size 2"):
        hparams.stage_plan(config, world_size=2)
    hparams = replace(hparams, max_steps=None, stages=None)
    with pytest.raises(ValueError, match="exactly one of --max_tokens and --max_steps"):
        hparams.stage_plan(config, world_size=1)
    with pytest.raises(ValueError, match="has 4096 tokens but model tiny_LLaMA_5M only 1000"):
        check_tokenizer(hparams, config.replace(vocab_size=1000), [])


@pytest.mark.slow
def test_cpu_demo_recipe_learns(tmp_path):
    """The demo recipe on the sample corpus: the validation loss ends below what token frequencies alone give."""
    run_demo(tmp_path)


@pytest.mark.parametrize("tokenizer", [DEMO_TOKENIZER, DEMO_BPE_TOKENIZER], ids=["sentencepiece", "tokenizer.json"])
def test_short_demo_run_learns(tmp_path, tokenizer):
    extra = ["--max_steps", "60", "--eval_interval", "20", "--model_config", "{n_layer: 2}"]
    run_demo(tmp_path, *extra, tokenizer=tokenizer)


def run_demo(tmp_path: Path, *extra: str, tokenizer: Path = DEMO_TOKENIZER) -> None:
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
        str(tokenizer),
        "--chunk_size",
        "263168",
        "--block_size",
        "256",
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
            str(tokenizer),
            "--chunk_size",
            "263168",
            "--block_size",
            "256",
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
            str(tokenizer),
            "--out_dir",
            str(tmp_path / "out"),
            *extra,
        ]
    )
    val = {step: float(loss) for step, loss in metrics(tmp_path / "out", "val_loss").items()}
    first, last = val[min(val)], val[max(val)]
    assert last < first and last < unigram_entropy(tmp_path / "slim" / "validation") < math.log(4096), val


def unigram_entropy(directory: Path) -> float:
    """The loss of a model that knows the validation tokens' frequencies and nothing of their context:
    a model that ends below it has learned from the context (the demo tokenizers: about 6.3 nats for the
    SentencePiece model, 6.6 for the BPE, against 8.3 for chance)."""
    counts = np.bincount(np.concatenate([read_shard(p) for p in sorted(directory.glob("*.bin"))]).astype(np.int64))
    frequencies = counts[counts > 0] / counts.sum()
    return float(-(frequencies * np.log(frequencies)).sum())


def test_initial_checkpoint_starts_from_its_weights(data, tmp_path):
    from safetensors.torch import save_file

    config = Config.from_name("tiny_LLaMA_5M", **TINY_OVERRIDES)
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


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_dashboards_continue_across_a_resume(data, tmp_path, monkeypatch, logger):
    """A run that crashed after logging steps past its newest checkpoint, then resumed: one wandb run
    (the same id), and TensorBoard shows each step once, with the values of the resumed run."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    common = ["--save_interval", "2", "--eval_interval", "100", "--logger", logger, "--learning_rate", "5e-2"]
    run(train_args(data, out, "--max_steps", "4", *common))
    shutil.rmtree(out / "step-00000004")  # as if the crash came after logging step 4, before its checkpoint
    run(train_args(data, out, "--max_steps", "6", *common))  # resumes at step 2, logs 3-6
    if logger == "wandb":
        runs = sorted((out / "wandb").glob("offline-run-*"))
        assert len(runs) == 2 and len({path.name.rsplit("-", 1)[1] for path in runs}) == 1, runs
        assert runs[0].name.endswith((out / "wandb_run_id").read_text().strip())
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(out / "tensorboard")).Reload()
        for name in ("train_loss", "tokens/a", "tokens/b"):
            events = accumulator.Scalars(name)
            assert [event.step for event in events] == [1, 2, 3, 4, 5, 6], name
            logged = metrics(out, name)  # the CSV keeps the resumed run's values
            assert [event.value for event in events] == pytest.approx([float(logged[s]) for s in range(1, 7)]), name


@pytest.mark.slow
@pytest.mark.parametrize("z_loss", ["0", "1e-4"], ids=["pytorch-loss", "our-loss"])
def test_compiled_blocks_and_loss_train_like_eager_ones(data, tmp_path, z_loss):
    for name, extra in (("eager", []), ("compiled", ["--compile", "true"])):
        run(train_args(data, tmp_path / name, "--max_steps", "3", "--z_loss", z_loss, *extra))
    eager, compiled = metrics(tmp_path / "eager", "train_loss"), metrics(tmp_path / "compiled", "train_loss")
    assert sorted(eager) == sorted(compiled) == [1, 2, 3]
    assert all(abs(float(eager[s]) - float(compiled[s])) < 1e-4 for s in eager)


def test_resuming_on_changed_data_is_refused_unless_allowed(data, tmp_path):
    out = tmp_path / "out"
    run(train_args(data, out, "--max_steps", "2", "--save_interval", "2"))
    write_shard(data / "a" / "train_a_0_0000000099.bin", np.arange(33 * 8, dtype=np.uint16))
    index_directory(data / "a", tokenizer_path=DEMO_TOKENIZER)
    result = run(train_args(data, out, "--max_steps", "4"), check=False)
    assert result.returncode != 0
    assert_refused(result)
    assert "Training source 'a' changed since" in result.stderr
    assert (
        "1 shard(s) added (e.g. train_a_0_0000000099.bin)" in result.stderr and "--allow_data_change" in result.stderr
    )
    result = run(train_args(data, out, "--max_steps", "4", "--allow_data_change", "true"))
    assert "resuming anyway" in result.stdout and sorted(metrics(out, "train_loss")) == [1, 2, 3, 4]


def test_a_shard_removed_on_purpose_is_re_indexed_and_the_run_resumes_when_allowed(data, tmp_path):
    """The journey from a removed shard: the refusal names the preparation index that lists it and the
    command; that command replaces the index; the resume then names the change; allowed, it resumes."""
    out, source = tmp_path / "out", data / "a"
    (source / "index.json").rename(source / "train_a_0.index.json")  # the name preparation gives it
    run(train_args(data, out, "--max_steps", "2", "--save_interval", "2"))
    (source / "train_a_0_0000000002.bin").unlink()
    result = run(train_args(data, out, "--max_steps", "4"), check=False)
    assert_refused(result)
    assert "1 shard(s) listed in train_a_0.index.json are not there (e.g. train_a_0_0000000002.bin)" in result.stderr
    command = result.stderr.split("the directory (this replaces its index files): ")[1].strip().split()
    assert command[:2] == ["python", "scripts/index_shards.py"]
    reindexed = subprocess.run(
        [sys.executable, str(REPO_ROOT / command[1]), *command[2:]], capture_output=True, text=True
    )
    assert reindexed.returncode == 0, reindexed.stderr
    assert (
        "1 shard(s) listed before are not there" in reindexed.stdout and "Replaced 1 index file(s)" in reindexed.stdout
    )
    assert sorted(p.name for p in source.glob("*.json")) == ["index.json"]
    result = run(train_args(data, out, "--max_steps", "4"), check=False)
    assert_refused(result)
    assert "1 shard(s) removed (e.g. train_a_0_0000000002.bin)" in result.stderr  # the tokenizer record was kept
    result = run(train_args(data, out, "--max_steps", "4", "--allow_data_change", "true"))
    assert sorted(metrics(out, "train_loss")) == [1, 2, 3, 4]


def test_a_run_directory_belongs_to_one_run(data, tmp_path):
    out = tmp_path / "out"
    run(train_args(data, out, "--max_steps", "4", "--save_interval", "2"))
    before = sorted(p.name for p in out.glob("step-*"))
    assert before == ["step-00000002", "step-00000004"]
    result = run(train_args(data, out, "--max_steps", "2", "--resume", "false"), check=False)
    assert result.returncode != 0
    assert_refused(result)
    assert f"{out} holds another run (newest checkpoint step-00000004)" in result.stderr
    assert "--resume auto" in result.stderr and "--overwrite true" in result.stderr
    assert sorted(p.name for p in out.glob("step-*")) == before  # nothing touched

    result = run(train_args(data, out, "--max_steps", "4"))  # resume auto on a finished run
    assert "is finished: step 4 of 4" in result.stdout and "raise --max_steps" in result.stdout

    result = run(train_args(data, out, "--max_steps", "1", "--overwrite", "true"), check=False)
    assert result.returncode != 0 and "--overwrite true starts a new run: give it with --resume false" in result.stderr
    assert_refused(result)
    result = run(train_args(data, out, "--max_steps", "1", "--resume", "false", "--overwrite", "true"))
    assert "removed the previous run's metrics.csv, step-00000002, step-00000004" in result.stdout
    assert sorted(p.name for p in out.glob("step-*")) == ["step-00000001"]
    assert sorted(metrics(out, "train_loss")) == [1]


def test_token_ids_outside_the_vocabulary_are_refused_at_startup(data, tmp_path):
    write_shard(data / "b" / "train_b_0_0000000007.bin", np.full(33, 5000, dtype=np.uint16))
    index_directory(data / "b", tokenizer_path=DEMO_TOKENIZER)
    result = run(train_args(data, tmp_path / "out", "--max_steps", "1"), check=False)
    assert result.returncode != 0
    assert_refused(result)
    assert "train_b_0_0000000007.bin: token id 5000 is outside the model's vocabulary of 4096" in result.stderr


def write_original_shard(path: Path, tokens: np.ndarray, chunk_size: int) -> None:
    """A shard as the original TinyLlama PackedDatasetBuilder writes it: always chunk_size tokens, padded."""
    padded = np.zeros(chunk_size, dtype=np.uint16)
    padded[: len(tokens)] = tokens
    path.write_bytes(b"LITPKDS" + struct.pack("<QBQ", 1, 8, chunk_size) + padded.tobytes())


def test_a_directory_made_by_the_original_scripts_trains_through_name_prefixes(tmp_path):
    original = tmp_path / "original"  # every split and source in one folder, told apart by name prefix
    original.mkdir()
    rng = np.random.default_rng(1)
    for prefix, files in (("train_slimpajama", 3), ("train_starcoder", 2), ("validation_slimpajama", 1)):
        for i in range(files):
            write_original_shard(original / f"{prefix}_{i:010d}.bin", rng.integers(0, 4096, 33 * 40), 33 * 40)
    command = [sys.executable, str(REPO_ROOT / "scripts" / "index_shards.py"), "--directory", str(original)]
    assert "Indexed 6 shards" in subprocess.run(command, capture_output=True, text=True, check=True).stdout
    train_data = (
        f"[{{name: slimpajama, path: {original}, prefix: train_slimpajama, weight: 0.7}}, "
        f"{{name: starcoder, path: {original}, prefix: train_starcoder, weight: 0.3}}]"
    )
    args = ["--train_data", train_data, "--val_data", str(original), "--val_prefix", "validation_", "--max_steps", "4"]
    result = run(train_args(tmp_path, tmp_path / "out", *args))
    assert "not in an index" not in result.stderr
    assert sorted(metrics(tmp_path / "out", "train_loss")) == [1, 2, 3, 4]
    assert sorted(metrics(tmp_path / "out", "val_loss")) == [4]


def test_the_wsd_schedule_reaches_the_training_loop(data, tmp_path):
    extra = ["--max_steps", "6", "--warmup_steps", "1", "--lr_schedule", "wsd", "--lr_decay_fraction", "0.5"]
    run(train_args(data, tmp_path / "out", *extra, "--lr_decay_shape", "linear", "--eval_interval", "100"))
    logged = {step: float(lr) for step, lr in metrics(tmp_path / "out", "lr").items()}
    # 1e-2 through step 3, then linear to 1e-3 over the last three steps (logged after each step)
    assert [logged[s] for s in range(1, 7)] == pytest.approx([1e-2, 1e-2, 1e-2, 7e-3, 4e-3, 1e-3])


def test_save_initial_writes_step_0_from_which_the_run_replays(data, tmp_path):
    extra = ["--max_steps", "4", "--save_interval", "2", "--keep_checkpoints", "5", "--eval_interval", "100"]
    run(train_args(data, tmp_path / "out", *extra, "--save_initial", "true"))
    assert sorted(p.name for p in (tmp_path / "out").glob("step-*")) == [f"step-0000000{i}" for i in (0, 2, 4)]
    torch.manual_seed(42)  # the run's seed, from which it initialises the model
    config = Config.from_name("tiny_LLaMA_5M", **TINY_OVERRIDES)
    fresh = GPT(config).state_dict()
    saved = load_model_weights(tmp_path / "out" / "step-00000000")
    assert sorted(saved) == sorted(fresh) and all(torch.equal(saved[k], fresh[k]) for k in fresh)

    replay = tmp_path / "replay"
    run(train_args(data, replay, *extra, "--resume", str(tmp_path / "out" / "step-00000000")))
    assert metrics(replay, "train_loss") == metrics(tmp_path / "out", "train_loss")


def test_z_loss_is_added_to_the_training_loss_and_logged_apart(data, tmp_path):
    extra = ["--max_steps", "2", "--eval_interval", "100"]
    run(train_args(data, tmp_path / "plain", *extra))
    run(train_args(data, tmp_path / "z", *extra, "--z_loss", "1e-2"))
    plain, with_z, z = (
        metrics(tmp_path / "plain", "train_loss"),
        metrics(tmp_path / "z", "train_loss"),
        metrics(tmp_path / "z", "z_loss"),
    )
    assert float(z[1]) > 0.1  # 1e-2 x logsumexp^2, logsumexp near ln(4096) at the start
    assert float(with_z[1]) == pytest.approx(float(plain[1]) + float(z[1]), abs=1e-5)  # before any update
    assert with_z[2] != plain[2]  # its gradient reached the update
    result = run(train_args(data, tmp_path / "bad", *extra, "--z_loss", "-1"), check=False)
    assert_refused(result, "--z_loss must not be negative")


def test_memory_knobs_change_no_loss(data, tmp_path):
    """Selective activation checkpointing and FSDP2 keeping gathered weights for the backward pass, on 2
    processes: the losses of the plain 1-process run."""
    extra = ["--max_steps", "3", "--eval_interval", "100"]
    run(train_args(data, tmp_path / "plain", *extra))
    knobs = ["--activation_checkpointing", "selective", "--reshard_after_forward", "false", "--devices", "2"]
    run(train_args(data, tmp_path / "knobs", *extra, *knobs), launcher=torchrun(2))
    assert_same_losses(
        metrics(tmp_path / "plain", "train_loss"), metrics(tmp_path / "knobs", "train_loss"), [1, 2, 3], "knobs"
    )


def test_validation_scores_the_same_blocks_on_any_number_of_processes(data, tmp_path):
    """--eval_blocks fixes the validation set: with the weights held still (learning rate 0), val_loss is
    the same for 1, 2 and 3 processes and micro-batches of 4 or 2 (10 blocks: no split divides it)."""
    frozen = ["--learning_rate", "0", "--min_lr", "0", "--max_steps", "2", "--eval_interval", "2"]
    common = [*frozen, "--eval_blocks", "10", "--global_batch_size", "12"]
    val_losses = {}
    for processes, micro in ((1, 4), (2, 2), (3, 2)):
        out = tmp_path / f"{processes}x{micro}"
        launcher = torchrun(processes) if processes > 1 else None
        args = [*common, "--devices", str(processes), "--micro_batch_size", str(micro)]
        run(train_args(data, out, *args), launcher=launcher)
        val_losses[processes, micro] = float(metrics(out, "val_loss")[2])
    reference = val_losses[1, 4]
    assert all(abs(loss - reference) <= 1e-6 for loss in val_losses.values()), val_losses
    run(train_args(data, tmp_path / "whole", *frozen, "--eval_blocks", "64", "--global_batch_size", "12"))
    assert abs(float(metrics(tmp_path / "whole", "val_loss")[2]) - reference) > 1e-4  # 10 blocks are not all 64


@pytest.fixture
def documents(tmp_path) -> Path:
    """Sources a and b of short documents (BOS every 3 to 12 tokens) with token ids that tell them apart
    (a below 2,000, b from 2,000), and a validation set."""
    rng = np.random.default_rng(1)
    for name, low, shards in (("a", 2, 3), ("b", 2000, 2), ("val", 2, 1)):
        (tmp_path / name).mkdir()
        for i in range(shards):
            tokens = rng.integers(low, low + 1998, 33 * 64, dtype=np.uint16)
            tokens[np.cumsum(rng.integers(3, 13, 33 * 64))[: 33 * 64 // 3] % (33 * 64)] = 1  # BOS
            write_shard(tmp_path / name / f"train_{name}_0_{i:010d}.bin", tokens)
        index_directory(tmp_path / name, tokenizer_path=DEMO_TOKENIZER)
    return tmp_path


def test_the_document_mask_reaches_training_only(documents, tmp_path):
    """With the weights held still (learning rate 0), --document_mask true changes every training loss
    and no validation loss (validation scores single texts, as the converted model will)."""
    frozen = ["--learning_rate", "0", "--min_lr", "0", "--max_steps", "4"]
    run(train_args(documents, tmp_path / "plain", *frozen))
    result = run(train_args(documents, tmp_path / "masked", *frozen, "--document_mask", "true"))
    assert f"'attention': '{kernels.SDPA_DOCUMENTS}'" in result.stdout
    plain, masked = metrics(tmp_path / "plain", "train_loss"), metrics(tmp_path / "masked", "train_loss")
    assert sorted(plain) == sorted(masked) == [1, 2, 3, 4]
    assert all(abs(float(plain[s]) - float(masked[s])) > 1e-4 for s in plain)
    assert metrics(tmp_path / "plain", "val_loss") == metrics(tmp_path / "masked", "val_loss")  # bitwise
    refused = run(
        train_args(documents, tmp_path / "refused", *frozen, "--document_mask", "true", "--tokenizer_path", "null"),
        check=False,
    )
    assert_refused(refused, "--document_mask true needs --tokenizer_path")
    assert not (tmp_path / "refused").exists()  # refused before any process group or output


def recount_source_tokens(documents: Path, steps: int) -> list[dict[str, int]]:
    """Tokens trained from a and b after each step, recounted from the content of the blocks the loader
    gives (a's ids are below 2,000), with the training split of train_args."""
    loader = create_loader([documents / "a", documents / "b"], 32, 2, global_batch_size=8, weights=[0.7, 0.3], seed=42)
    batches, counts, totals = iter(loader), [], {"a": 0, "b": 0}
    for _ in range(steps):
        for _ in range(4):  # micro-batches of 2 per step of 8
            for row in next(batches):
                totals["a" if int(row.max()) < 2000 else "b"] += 32
        counts.append(dict(totals))
    return counts


def test_tokens_per_source_are_logged_exactly_and_continue_across_a_resume_on_another_world(
    documents, tmp_path, no_process_left
):
    expected = recount_source_tokens(documents, 6)
    out = tmp_path / "out"
    first = run(
        train_args(documents, out, "--max_steps", "6", "--save_interval", "3", "--devices", "2"), launcher=torchrun(2)
    )
    shutil.rmtree(out / "step-00000006")
    resumed = run(train_args(documents, out, "--max_steps", "6", "--devices", "1"))
    assert "at step 3" in resumed.stdout
    for name in ("a", "b"):
        logged = metrics(out, f"tokens/{name}")
        assert logged == {step: str(expected[step - 1][name]) for step in range(1, 7)}, name
    assert 0 < expected[5]["b"] < expected[5]["a"]  # both sources were drawn
    for output, step in ((first.stdout, 2), (resumed.stdout, 5)):  # the mixture of the step just logged
        before, after = expected[step - 2], expected[step - 1]
        share = {name: (after[name] - before[name]) / 256 for name in ("a", "b")}
        line = next(line for line in output.splitlines() if line.startswith(f"step {step:>7,}/"))
        assert line.endswith(f"| mix a {share['a']:.1%} b {share['b']:.1%}"), line


def test_a_resume_reads_the_data_listings_and_fingerprints_once_per_job(data, tmp_path, no_process_left):
    """On 2 processes, traced by lit_gpt/file_trace.py: rank 0 alone lists the data directories and reads
    their indexes and the checkpoint's data fingerprint; rank 1 opens only the shards it trains on and
    its part of the checkpoint. The checkpoint holds digests and totals, the shard lists are in the run's
    manifests (one per source)."""
    out = tmp_path / "out"
    run(train_args(data, out, "--max_steps", "2", "--save_interval", "2", "--devices", "2"), launcher=torchrun(2))
    recorded = json.loads((out / "step-00000002" / "data_fingerprint.json").read_text())
    assert {name: set(entry) for name, entry in recorded.items()} == {n: {"digest", "shards", "tokens"} for n in "ab"}
    manifests = {path.stem for path in (out / "data_manifests").glob("*.json")}
    assert manifests == {recorded["a"]["digest"], recorded["b"]["digest"]}

    traced = ["-m", "lit_gpt.file_trace", "--out", str(tmp_path / "traces")]
    traced += ["--under", str(data), "--under", str(out), "--", str(SCRIPT)]
    command = [*torchrun(2), *traced, *train_args(data, out, "--max_steps", "4", "--devices", "2")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "at step 2" in result.stdout, result.stderr[-3000:]
    events = {rank: json.loads((tmp_path / "traces" / f"rank-{rank}.json").read_text()) for rank in (0, 1)}
    sources = [data / name for name in ("a", "b", "val")]  # (out is in data's folder too)
    for rank, expected in ((0, 1), (1, 0)):
        listed = [Path(event["list"]) for event in events[rank] if "list" in event]
        opened = [Path(event["open"]) for event in events[rank] if "open" in event]
        assert sorted(path for path in listed if path in sources) == sorted(sources * expected)
        assert sum(path.suffix == ".json" and path.parent in sources for path in opened) == 3 * expected
        assert sum(path.name == "data_fingerprint.json" for path in opened) == expected
        assert not any(path.parent.name == "data_manifests" for path in opened)  # the digests are equal
        assert any(path.suffix == ".bin" for path in opened) and any(path.suffix == ".distcp" for path in opened)
