"""The SentencePiece tokenizer of Llama 2 (or any SentencePiece model trained with the same options)."""

from __future__ import annotations

import os
from pathlib import Path

import sentencepiece as spm

from lit_gpt.errors import InvalidInput, MissingInput


class Tokenizer:
    """Wraps a SentencePiece ``tokenizer.model``; ``path`` is the file or a directory that holds it."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.model"
        if not path.is_file():
            raise MissingInput(
                f"No SentencePiece tokenizer model at {path}; Llama 2's is fetched as PRETRAIN.md §2 shows, and "
                "assets/tokenizer holds the demo's (--tokenizer_path)"
            )
        self.path = path
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.Load(str(path))
        except (OSError, RuntimeError) as error:
            raise InvalidInput(f"{path} is not a valid SentencePiece model: {error}") from None
        self.bos_id = self.processor.bos_id()
        self.eos_id = self.processor.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise InvalidInput(f"{path} defines no BOS or EOS token; pretraining needs both")

    @property
    def vocab_size(self) -> int:
        return self.processor.vocab_size()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        return self.processor.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(
        self, texts: list[str], bos: bool = True, eos: bool = False, num_threads: int | None = None
    ) -> list[list[int]]:
        """Encode many texts at once with SentencePiece's own thread pool (the GIL is released)."""
        return self.processor.encode(texts, add_bos=bos, add_eos=eos, num_threads=num_threads or os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(list(ids))
