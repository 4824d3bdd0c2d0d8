"""A vocabulary above 65,535 ids (Llama 3's has 128,256): 32-bit shards from preparation to training,
resume and conversion to Hugging Face."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from lit_gpt import Tokenizer
from lit_gpt.data.index import Index
from lit_gpt.data.shards import read_shard

from conftest import REPO_ROOT, TINY_OVERRIDES, assert_refused, load_script, metrics, run_prepare, train_args

WORDS = 70_000
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<unk>"]


def word_tokenizer(directory: Path) -> Path:
    """A word-level tokenizer.json of 70,003 ids: one id per word ``w0``..``w69999`` after the specials."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIALS)} | {f"w{i}": len(SPECIALS) + i for i in range(WORDS)}
    tokenizer = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(SPECIALS)
    directory.mkdir(parents=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "unk_token": SPECIALS[2]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def corpus(root: Path) -> list[str]:
    """SlimPajama-layout files of documents drawn mostly from the ids above 65,535."""
    rng = np.random.default_rng(0)
    texts = []
    for f in range(3):
        batch = [" ".join(f"w{w}" for w in rng.integers(60_000, WORDS, rng.integers(20, 200))) for _ in range(40)]
        records = [{"text": text, "meta": {"redpajama_set_name": "RedPajamaC4"}} for text in batch]
        lines = b"".join(json.dumps(record).encode() + b"\n" for record in records)
        path = root / "train" / "chunk1" / f"part_{f}.jsonl.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress(lines))
        texts += batch
    return texts


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("wide")
    tokenizer = word_tokenizer(root / "tokenizer")
    texts = corpus(root / "slim")
    args = ["--source_path", str(root / "slim"), "--tokenizer_path", str(tokenizer), "--num_workers", "2"]
    args += ["--chunk_size", "660", "--block_size", "32"]
    run_prepare("prepare_slimpajama.py", *args, "--destination_path", str(root / "data" / "a"))
    for name in ("b", "val"):
        shutil.copytree(root / "data" / "a", root / "data" / name)
    return root / "data", tokenizer, texts


def test_a_vocabulary_over_65535_ids_prepares_32_bit_shards_with_every_token(prepared):
    data, tokenizer_dir, texts = prepared
    tokenizer = Tokenizer(tokenizer_dir)
    assert tokenizer.vocab_size == WORDS + len(SPECIALS)
    index = Index.read(data / "a" / "train_slimpajama_0.index.json")
    assert set(index.shards.dtypes) == {"int32"} and index.shards.max_ids.max() > 65_535
    tokens = np.concatenate([read_shard(data / "a" / name) for name in index.shards.names])
    assert tokens.dtype == np.int32
    expected = [[tokenizer.bos_id, *(len(SPECIALS) + int(w[1:]) for w in text.split())] for text in texts]
    assert tokens.tolist() == [i for document in expected for i in document]


def wide_args(data: Path, out: Path, tokenizer: Path, *extra: str) -> list[str]:
    model = "{" + ", ".join(f"{k}: {v}" for k, v in (TINY_OVERRIDES | {"vocab_size": 70_016}).items()) + "}"
    return train_args(data, out, "--model_config", model, "--tokenizer_path", str(tokenizer), *extra)


def train(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "pretrain" / "tinyllama.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-5000:])
    return result


def test_trains_resumes_and_converts_with_ids_above_65535(prepared, tmp_path):
    data, tokenizer_dir, _ = prepared
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(wide_args(data, whole, tokenizer_dir, "--max_steps", "4"))
    train(wide_args(data, resumed, tokenizer_dir, "--max_steps", "2", "--save_interval", "2"))
    train(wide_args(data, resumed, tokenizer_dir, "--max_steps", "4", "--resume", "auto"))
    expected, actual = metrics(whole, "train_loss"), metrics(resumed, "train_loss")
    assert sorted(expected) == [1, 2, 3, 4] and actual == expected

    checkpoint = whole / "step-00000004"
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in checkpoint.iterdir()}
    hf = tmp_path / "hf"
    load_script("scripts/convert_lit_checkpoint.py").convert_lit_checkpoint(checkpoint, hf)
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(hf)
    text = "w65536 w69999 w3"
    assert reference(text)["input_ids"] == Tokenizer(checkpoint).encode(text) == [0, 65539, 70002, 6]
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    assert model.config.vocab_size == 70_016 and model.config.bos_token_id == 0
    with torch.no_grad():
        assert model(torch.tensor([[0, 65539, 70002]])).logits.shape == (1, 3, 70_016)
    back = tmp_path / "lit"  # and back: conversion from Hugging Face copies the tokenizer's files
    load_script("scripts/convert_hf_checkpoint.py").convert_hf_checkpoint(hf, back)
    names = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert names <= {p.name for p in back.iterdir()} and Tokenizer(back).encode(text) == [0, 65539, 70002, 6]


def test_an_id_outside_the_models_vocabulary_is_refused_naming_the_shard(prepared, tmp_path):
    data, _, _ = prepared
    model = "{" + ", ".join(f"{k}: {v}" for k, v in (TINY_OVERRIDES | {"vocab_size": 65_536}).items()) + "}"
    args = train_args(data, tmp_path / "out", "--model_config", model, "--tokenizer_path", "null", "--max_steps", "1")
    result = train(args, check=False)
    assert_refused(result, f"{data / 'a' / 'train_slimpajama_0_0000000000.bin'}: token id", "outside the model's")
