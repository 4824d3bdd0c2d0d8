"""Expected errors reach the person as one line on stderr and exit status 2, without a traceback."""

import json
import subprocess
import sys

import pytest
import zstandard

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
