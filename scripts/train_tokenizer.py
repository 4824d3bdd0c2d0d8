"""Train a tokenizer on text files already on disk: a SentencePiece model with the options of Llama 2's
(``--kind sentencepiece``, writes tokenizer.model) or a byte-level BPE like Llama 3's (``--kind bpe``, writes
tokenizer.json + tokenizer_config.json with the ``tokenizers`` library).

The repository's two small demo tokenizers were made with (stdlib of Python 3.11)::

    STDLIB=$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
    python scripts/train_tokenizer.py --inputs "[$STDLIB]" --pattern '*.py' --exclude '[site-packages]' \
        --vocab_size 4096 --output_dir assets/tokenizer
    python scripts/train_tokenizer.py --kind bpe --inputs "[$STDLIB]" --pattern '*.py' \
        --exclude '[site-packages]' --vocab_size 4096 --output_dir assets/tokenizer-bpe

For real pretraining use the released tokenizers: Llama 2's tokenizer.model (TinyLlama v1) or Llama 3's
tokenizer.json (TinyLlama3).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

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


# Llama 3's pre-tokenization: contractions, words with one leading non-letter, numbers of up to 3 digits,
# punctuation runs, newlines and other whitespace.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
BPE_SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>"}


def texts(files: list[Path], skipped: list[Path]) -> Iterator[str]:
    """The text of every readable UTF-8 file; files that are not UTF-8 go to ``skipped``."""
    for path in tqdm(files, desc="reading", unit="file"):
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped.append(path)


def train_bpe(files: list[Path], output_dir: Path, vocab_size: int, skipped: list[Path]) -> Path:
    """A byte-level BPE in the Llama 3 style: every byte is in the alphabet (no unknown token, no fallback
    needed), BOS/EOS/pad specials first, and a post-processor that adds BOS as Llama 3's does, so that
    ``AutoTokenizer`` encodes as training does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = list(BPE_SPECIALS.values())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts(files, skipped), trainer)
    bos = BPE_SPECIALS["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    path = output_dir / "tokenizer.json"
    tokenizer.save(str(path))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **BPE_SPECIALS, "clean_up_tokenization_spaces": False}
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def train_tokenizer(
    inputs: list[Path],
    output_dir: Path,
    kind: Literal["sentencepiece", "bpe"] = "sentencepiece",
    vocab_size: int = 32000,
    pattern: str = "*.txt",
    exclude: list[str] | None = None,
    max_lines: int = 2_000_000,
    seed: int = 1234,
) -> Path:
    """Train a tokenizer and write it to ``output_dir``.

    Args:
        inputs: text files, or directories searched recursively for ``pattern``.
        output_dir: where tokenizer.model (and tokenizer.vocab, for reading) or, for ``bpe``,
            tokenizer.json and tokenizer_config.json go.
        kind: ``sentencepiece`` (Llama 2's options) or ``bpe`` (byte-level, Llama 3's pre-tokenization).
        vocab_size: number of entries, including the special tokens (and SentencePiece's 256 byte pieces).
        pattern: glob for files inside directories.
        exclude: names of sub-directories to leave out of that search.
        max_lines: lines sampled for training (SentencePiece's input_sentence_size; bpe reads all).
        seed: makes the sample and so the SentencePiece model repeatable (bpe is deterministic).
    """
    files = text_files(inputs, pattern, exclude or [])
    output_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[Path] = []
    if kind == "bpe":
        model_path = train_bpe(files, output_dir, vocab_size, skipped)
        report(files, skipped, model_path, vocab_size)
        return model_path
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
    report(files, skipped, model_path, vocab_size)
    return model_path


def report(files: list[Path], skipped: list[Path], model_path: Path, vocab_size: int) -> None:
    print(f"Trained on {len(files) - len(skipped)} files; wrote {model_path} ({vocab_size} entries)")
    if skipped:
        print(f"Skipped {len(skipped)} files that are not UTF-8 text, first: {skipped[0]}", file=sys.stderr)


if __name__ == "__main__":
    run(train_tokenizer)
