"""Train a SentencePiece tokenizer with the options of Llama 2's, on text files already on disk.

The repository's small demo tokenizer (assets/tokenizer/tokenizer.model) was made with:

    python scripts/train_tokenizer.py \
        --inputs "[$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')]" \
        --pattern '*.py' --exclude '[site-packages]' --vocab_size 4096 --output_dir assets/tokenizer

For real pretraining use Llama 2's own tokenizer.model: TinyLlama keeps Llama 2's vocabulary.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm
from tqdm import tqdm

from lit_gpt.cli import run
from lit_gpt.errors import MissingInput

# Llama 2's trainer_spec and normalizer_spec, as recorded in its tokenizer.model.
LLAMA2_OPTIONS = dict(
    model_type="bpe",
    character_coverage=0.99995,
    byte_fallback=True,
    split_digits=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    allow_whitespace_only_pieces=True,
    max_sentencepiece_length=16,
    max_sentence_length=4192,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
)


def text_files(inputs: list[Path], pattern: str, exclude: list[str]) -> list[Path]:
    """The files among ``inputs``, with directories searched recursively for ``pattern``, sorted."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = (p for p in path.rglob(pattern) if p.is_file())
            files.extend(sorted(p for p in found if not set(p.relative_to(path).parts) & set(exclude)))
        elif path.is_file():
            files.append(path)
        else:
            raise MissingInput(f"Input {path} does not exist")
    if not files:
        raise MissingInput(f"No files matching {pattern!r} under {', '.join(map(str, inputs))}")
    return files


def lines(files: list[Path], skipped: list[Path]) -> Iterator[str]:
    """Non-blank lines of every readable UTF-8 file; files that are not UTF-8 go to ``skipped``."""
    for path in tqdm(files, desc="reading", unit="file"):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped.append(path)
            continue
        yield from (line for line in text.splitlines() if line.strip())


def train_tokenizer(
    inputs: list[Path],
    output_dir: Path,
    vocab_size: int = 32000,
    pattern: str = "*.txt",
    exclude: list[str] | None = None,
    max_lines: int = 2_000_000,
    seed: int = 1234,
) -> Path:
    """Train a BPE SentencePiece model and write ``output_dir/tokenizer.model``.

    Args:
        inputs: text files, or directories searched recursively for ``pattern``.
        output_dir: where tokenizer.model (and tokenizer.vocab, for reading) go.
        vocab_size: number of pieces, including the 3 special tokens and the 256 byte-fallback pieces.
        pattern: glob for files inside directories.
        exclude: names of sub-directories to leave out of that search.
        max_lines: lines sampled for training (SentencePiece's input_sentence_size).
        seed: makes the sample and so the model repeatable.
    """
    files = text_files(inputs, pattern, exclude or [])
    output_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[Path] = []
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(files, skipped),
        model_prefix=str(output_dir / "tokenizer"),
        vocab_size=vocab_size,
        input_sentence_size=max_lines,
        shuffle_input_sentence=True,
        num_threads=1,
        minloglevel=2,
        **LLAMA2_OPTIONS,
    )
    model_path = output_dir / "tokenizer.model"
    print(f"Trained on {len(files) - len(skipped)} files; wrote {model_path} ({vocab_size} pieces)")
    if skipped:
        print(f"Skipped {len(skipped)} files that are not UTF-8 text, first: {skipped[0]}", file=sys.stderr)
    return model_path


if __name__ == "__main__":
    run(train_tokenizer)
