import subprocess
import sys

import pytest

from lit_gpt import Tokenizer

from conftest import REPO_ROOT, assert_refused


def test_trains_a_llama_style_tokenizer(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    prose = "The quick brown fox jumps over the lazy dog while 42 llamas graze.\n" * 200
    (corpus / "a.txt").write_text(prose + "def main():\n    return 7\n" * 100)
    (corpus / "b.txt").write_text("Tokenizers split digits like 12345 and keep    spaces.\n" * 200)
    (corpus / "binary.txt").write_bytes(b"\xff\xfe not utf-8 \x80")
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train_tokenizer.py"), "--inputs", f"[{corpus}]"]
    command += ["--output_dir", str(tmp_path / "out"), "--vocab_size", "320"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "Skipped 1 files that are not UTF-8 text" in result.stderr

    tokenizer = Tokenizer(tmp_path / "out")
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (320, 1, 2)
    assert tokenizer.processor.unk_id() == 0
    assert tokenizer.processor.encode("12345", out_type=str)[-5:] == list("12345")  # split digits
    text = "über\tspaces    kept 🦙"  # unseen characters: byte fallback, whitespace kept as is
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_missing_input_is_a_clear_error(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train_tokenizer.py"), "--inputs", f"[{tmp_path / 'nope'}]"]
    result = subprocess.run(command + ["--output_dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert_refused(result)
    assert f"Input {tmp_path / 'nope'} does not exist" in result.stderr


def test_trains_a_llama3_style_byte_level_bpe(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The quick brown fox jumps over the lazy dog; 12345 llamas graze.\n" * 300)
    (corpus / "binary.txt").write_bytes(b"\xff\xfe not utf-8 \x80")
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train_tokenizer.py"), "--kind", "bpe"]
    command += ["--inputs", f"[{corpus}]", "--output_dir", str(tmp_path / "out"), "--vocab_size", "300"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "Skipped 1 files that are not UTF-8 text" in result.stderr

    tokenizer = Tokenizer(tmp_path / "out")
    assert (tokenizer.backend, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == ("huggingface", 300, 0, 1)
    assert tokenizer.boundary.position == "before"
    assert [tokenizer.id_to_token(i) for i in tokenizer.encode("12345", bos=False)] == ["123", "45"]  # 3 digits
    text = "über\tspaces    kept 🦙 中文"  # unseen characters: bytes, never an unknown token
    assert tokenizer.decode(tokenizer.encode(text)) == text
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert reference(text)["input_ids"] == tokenizer.encode(text)
