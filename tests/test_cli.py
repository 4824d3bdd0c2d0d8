"""Expected errors reach the person as one line on stderr and exit status 2, without a traceback."""

import json
import os
import subprocess
import sys

import pytest
import zstandard

from lit_gpt.cli import parse_dataclass
from lit_gpt.errors import InvalidInput
from lit_gpt.run import RunConfig

from conftest import DEMO_TOKENIZER, REPO_ROOT, assert_refused, free_port, load_script


def command(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], capture_output=True, text=True)


def test_prepare_names_the_folder_and_pattern_it_searched(tmp_path):
    result = command("scripts/prepare_slimpajama.py", "--source_path", str(tmp_path), "--tokenizer_path", "x")
    assert_refused(result, "No input files for the slimpajama train split", f"{tmp_path}/train/chunk*/*.jsonl.zst")
    result = command("scripts/prepare_starcoder.py", "--source_path", str(tmp_path), "--tokenizer_path", "x")
    assert_refused(result, f"nothing matches {tmp_path}/*/*.parquet")


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--temperature", "-1", "temperature must be >= 0"),
        ("--top_k", "0", "top_k must be at least 1"),
        ("--top_p", "1.5", "top_p must be in (0, 1]"),
        ("--max_new_tokens", "0", "max_new_tokens must be at least 1"),
    ],
)
def test_generate_refuses_sampling_settings_that_make_noise(tmp_path, option, value, message):
    assert_refused(command("scripts/generate.py", "--checkpoint_dir", str(tmp_path), option, value), message)


def test_the_demo_keeps_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "precious.bin").write_bytes(b"data")
    result = command("scripts/demo.py", "--data_dir", str(tmp_path / "corpus"), "--out_dir", str(tmp_path / "out"))
    assert_refused(result, f"{tmp_path / 'corpus'} is not empty and was not made by the demo", "--overwrite true")
    assert (tmp_path / "corpus" / "precious.bin").read_bytes() == b"data"


def test_converting_a_folder_that_is_no_checkpoint_is_refused(tmp_path):
    result = command("scripts/convert_lit_checkpoint.py", "--checkpoint_dir", str(tmp_path), "--output_dir", "x")
    assert_refused(result, f"No model_config.json in {tmp_path}: not a lit or training checkpoint")


def test_training_refusals_are_one_line_from_rank_zero(data, tmp_path):
    args = ["--model_name", "tiny_LLaMA_5M", "--tokenizer_path", str(DEMO_TOKENIZER), "--out_dir", str(tmp_path)]
    args += ["--train_data", f"[{{name: a, path: {data / 'a'}}}]", "--max_steps", "1", "--val_data", "null"]
    result = command("pretrain/tinyllama.py", *args, "--global_batch_size", "12", "--micro_batch_size", "8")
    assert_refused(result, "global batch size 12 is not a multiple of world size 1 x micro-batch size 8")
    result = command("pretrain/tinyllama.py", *args, "--train_data", f"[{{name: a, path: {tmp_path / 'nope'}}}]")
    assert_refused(result, f"Dataset directory {tmp_path / 'nope'} does not exist")


@pytest.mark.parametrize(
    "mistake, message",
    [
        (["--train_data", "[{name: a, path: MISSING}]"], "Dataset directory MISSING does not exist (data source a)"),
        (["--val_data", "MISSING"], "Dataset directory MISSING does not exist (data source validation)"),
        (["--tokenizer_path", "MISSING"], "No tokenizer at MISSING; pass a Hugging Face tokenizer.json"),
        (["--global_batch_size", "10"], "global batch size 10 is not a multiple of world size 2 x micro-batch size 2"),
    ],
)
def test_input_mistakes_are_refused_before_the_processes_start(data, tmp_path, mistake, message):
    """With --devices 2, before Fabric launches the second process or forms a process group."""
    args = [
        "--model_name",
        "tiny_LLaMA_5M",
        "--tokenizer_path",
        str(DEMO_TOKENIZER),
        "--out_dir",
        str(tmp_path / "out"),
    ]
    args += ["--train_data", f"[{{name: a, path: {data / 'a'}}}]", "--val_data", str(data / "val"), "--max_steps", "1"]
    args += ["--devices", "2", "--global_batch_size", "8", "--micro_batch_size", "2"]
    missing = str(tmp_path / "nope")
    result = command("pretrain/tinyllama.py", *args, *[word.replace("MISSING", missing) for word in mistake])
    assert_refused(result, message.replace("MISSING", missing))
    assert "Initializing distributed" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_a_chunk_size_that_blocks_do_not_divide(tmp_path):
    (tmp_path / "train" / "chunk1").mkdir(parents=True)
    record = json.dumps({"text": "hello", "meta": {}}).encode()
    (tmp_path / "train" / "chunk1" / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(record))
    args = ["--source_path", str(tmp_path), "--tokenizer_path", str(DEMO_TOKENIZER), "--chunk_size", "1000"]
    result = command("scripts/prepare_slimpajama.py", *args, "--destination_path", str(tmp_path / "out"))
    assert_refused(result, "--chunk_size 1000 is not a multiple of block_size + 1 = 2049")
    assert not (tmp_path / "out").exists()


def test_the_demo_replaces_a_folder_an_earlier_demo_made(tmp_path):
    claim = load_script("scripts/demo.py").claim
    claim(tmp_path / "out", overwrite=False)
    (tmp_path / "out" / "step-00000200").mkdir()
    claim(tmp_path / "out", overwrite=False)  # marked as the demo's: emptied without asking
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".made-by-demo"]


def test_under_torchrun_only_rank_zero_prints_the_refusal(data, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    args = ["--model_name", "tiny_LLaMA_5M", "--train_data", f"[{{name: a, path: {data / 'a'}}}]", "--val_data", "null"]
    args += ["--max_steps", "1", "--global_batch_size", "12", "--micro_batch_size", "8", "--out_dir", str(tmp_path)]
    script = str(REPO_ROOT / "pretrain" / "tinyllama.py")
    result = subprocess.run([*torchrun, str(free_port()), script, *args], capture_output=True, text=True)
    assert result.returncode != 0  # torchrun reports the failed processes after them
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: Stage 'pretraining': global batch size 12 is not a multiple of world size 2 x micro-batch size 8 = 16"
    ]
    result = subprocess.run(
        [*torchrun, str(free_port()), script, *args, "--devices", "4"], capture_output=True, text=True
    )
    assert "error: --devices 4, but torchrun started 2 processes per node" in result.stderr


@pytest.mark.parametrize(
    "script, typo, suggestion",
    [
        ("pretrain/tinyllama.py", "--micro_batchsize", "did you mean --micro_batch_size"),
        ("scripts/show_batch.py", "--chars_show", "did you mean --chars_shown"),
        ("scripts/prepare_slimpajama.py", "--destination", "did you mean --destination_path"),
    ],
)
def test_a_mistyped_option_is_one_line_with_the_closest_names(script, typo, suggestion):
    result = command(script, typo, "3")
    assert_refused(result, f"Unknown option {typo}; {suggestion}", "--help lists every option")
    assert len(result.stderr.splitlines()) == 1 and not result.stdout, result.stderr


COMMANDS = sorted(str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", ["pretrain/tinyllama.py", *COMMANDS])
def test_help_opens_with_whole_sentences_and_readable_types(script):
    result = command(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    description = result.stdout.split("\n\n")[1]
    assert description.rstrip().endswith((".", ")", ":")), description
    assert "<class" not in result.stdout and "type:" in result.stdout, result.stdout


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "block-buffered"])
def test_output_cut_short_by_its_reader_ends_quietly(unbuffered):
    """``... | head -1`` once head has gone: the reader's end is closed before the command prints; it stops
    with status 141 and no BrokenPipeError traceback, whether its output is buffered or not."""
    recipe = "pretrain/configs/cpu_demo.yaml"
    script = [sys.executable, str(REPO_ROOT / "scripts" / "plan_memory.py"), "--recipe", recipe]
    environment = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    process = subprocess.Popen(
        script, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait() == 141 and stderr == "", stderr


@pytest.mark.parametrize("template", ["pretrain.sbatch", "prepare.sbatch"])
def test_a_slurm_job_without_the_projects_environment_stops_in_one_line(tmp_path, template):
    """sbatch from a shell where another environment is active: the job's python cannot import lit_gpt
    (here a stand-in that fails every import); the template says so and stops before srun or python run."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "python").chmod(0o755)
    environment = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    environment |= {"SOURCE": "s", "DEST": "d", "TOKENIZER": "t"}  # prepare.sbatch's settings
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "slurm" / template)], capture_output=True, text=True, env=environment
    )
    assert_refused(result, f"{tmp_path / 'bin' / 'python'} cannot import lit_gpt", "pip install -e .")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--micro_batch_size", "abc"], "--micro_batch_size expects int, not 'abc'"),
        (["--activation_checkpointing", "true"], "--activation_checkpointing expects one of none, full, selective"),
        (["--precision", "16"], "--precision expects one of bf16-mixed, bf16-true, 32-true or null, not '16'"),
        (["--val_data", "[{name: a}]"], "--val_data expects Path or list[DataSource] or null (missing: path)"),
        (["--config", "missing.yaml"], "missing.yaml: no such file"),
        (["--eval_iters", "4"], "--eval_iters was replaced by --eval_blocks"),
        ("micro_bach_size: 4", "recipe.yaml: unknown key micro_bach_size; did you mean micro_batch_size"),
        ("eval_iters: 4", "recipe.yaml: eval_iters was replaced by eval_blocks"),
    ],
)
def test_a_value_the_settings_cannot_use_is_one_line_naming_the_option(tmp_path, monkeypatch, args, message):
    """Types as written (int, not <class 'int'>), a choice's choices, the recipe file and its closest keys,
    a renamed option's replacement: instead of jsonargparse's usage text and several-line report."""
    monkeypatch.chdir(tmp_path)
    if isinstance(args, str):  # a recipe's content
        (tmp_path / "recipe.yaml").write_text(args + "\n")
        args = ["--config", "recipe.yaml"]
    with pytest.raises(InvalidInput) as refused:
        parse_dataclass(RunConfig, args)
    assert message in str(refused.value) and "\n" not in str(refused.value) and "<class" not in str(refused.value)


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("pretrain/tinyllama.py", ["--activation_checkpointing", "true"], "expects one of none, full, selective"),
        ("scripts/plan_memory.py", ["--recipe", "pretrain/configs/cpu_demo.yaml", "--capacity_gib", "x"], "float"),
        ("scripts/show_batch.py", ["--recipe", "nope.yaml"], "nope.yaml: no such recipe file"),
    ],
)
def test_commands_report_unusable_values_in_one_line_with_status_2(script, args, message):
    result = subprocess.run([sys.executable, script, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert_refused(result, message)
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "args, status",
    [
        (["--help"], 0),
        (["--micro_bach_size", "4"], 2),
        (["--activation_checkpointing", "true"], 2),
        (["--config", "pretrain/configs/nothing.yaml"], 2),
    ],
)
def test_training_answers_help_and_option_mistakes_before_importing_torch(args, status):
    """What the training script imports before it answers: neither torch nor Lightning (seconds each);
    the time itself is scripts/benchmark_cli.py's."""
    script = str(REPO_ROOT / "pretrain" / "tinyllama.py")
    result = subprocess.run([sys.executable, "-X", "importtime", script, *args], capture_output=True, text=True)
    assert result.returncode == status, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "jsonargparse" in imported and "lit_gpt.run" in imported  # the log is the one looked for
    assert not {"torch", "lightning"} & imported, sorted({"torch", "lightning"} & imported)


def test_an_out_dir_inside_a_file_is_named_as_such(data, tmp_path):
    (tmp_path / "notes").write_text("not a folder")
    for out_dir in (tmp_path / "notes", tmp_path / "notes" / "run"):
        args = ["--model_name", "tiny_LLaMA_5M", "--tokenizer_path", str(DEMO_TOKENIZER), "--out_dir", str(out_dir)]
        args += ["--train_data", f"[{{name: a, path: {data / 'a'}}}]", "--val_data", str(data / "val")]
        result = command("pretrain/tinyllama.py", *args, "--max_steps", "1", "--micro_batch_size", "2")
        assert_refused(result, f"--out_dir {out_dir}: {tmp_path / 'notes'} is a file, not a folder")
