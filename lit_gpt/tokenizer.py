"""One ``Tokenizer`` over two backends: a Hugging Face ``tokenizer.json`` (the Llama 3 generation, SmolLM2,
Qwen...) read with the ``tokenizers`` library, or a SentencePiece ``tokenizer.model`` (Llama 2's, TinyLlama's).

Ids equal what ``transformers`` gives for the same files: the library encodes the text without its own
special tokens, and the one document boundary is added here, so a post-processor that prepends BOS
(Llama 3's does) never yields a second one.

The document boundary is one decision, made from the files alone: BOS before each document where the
tokenizer has a BOS distinct from its EOS (Llama 2 ``<s>``, Llama 3 ``<|begin_of_text|>``), else EOS after
each document (GPT-2 and SmolLM2 have one ``<|endoftext|>``). Preparation records it in the dataset index
and training checks it, and ``--document_mask`` cuts documents at it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lit_gpt.errors import InvalidInput, MissingInput

HF_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
HF_COMPANIONS = ("tokenizer_config.json", "special_tokens_map.json")  # copied with tokenizer.json
TOKENIZER_FILES = (HF_FILE, *HF_COMPANIONS, SENTENCEPIECE_FILE)  # what conversion from Hugging Face copies
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")  # when no tokenizer_config.json says
EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")
TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+=* \d+\r?$")
WHAT_TO_PASS = (
    "pass a Hugging Face tokenizer.json (e.g. Llama 3's, PRETRAIN.md §2), a SentencePiece tokenizer.model "
    "(Llama 2's) or a directory holding either"
)


@dataclass(frozen=True)
class Boundary:
    """The token that separates packed documents, and whether it comes ``before`` or ``after`` each."""

    token: str
    id: int
    position: Literal["before", "after"]

    def to_dict(self) -> dict:
        return {"token": self.token, "id": self.id, "position": self.position}

    def __str__(self) -> str:
        return f"{self.token} (id {self.id}) {self.position} each document"


def tokenizer_file(path: str | Path) -> Path:
    """The file that defines the tokenizer at ``path``: the file itself, or in a directory its
    ``tokenizer.json`` (preferred, as litgpt and torchtitan do) else its ``tokenizer.model``."""
    path = Path(path)
    if path.is_dir():
        for name in (HF_FILE, SENTENCEPIECE_FILE):
            if (path / name).is_file():
                return path / name
        raise MissingInput(f"{path} holds neither {HF_FILE} nor {SENTENCEPIECE_FILE}; {WHAT_TO_PASS}")
    if not path.is_file():
        raise MissingInput(f"No tokenizer at {path}; {WHAT_TO_PASS} (assets/tokenizer holds the demo's)")
    return path


def one_thread_per_process() -> None:
    """Keep the ``tokenizers`` library in this process on the calling thread: for processes that are
    themselves the parallelism (preparation's workers, one per core), so that N workers use N cores and
    not N x N threads. The library reads the variable at every batch."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


@functools.cache
def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer at ``path``, read once per process: training asks for it at several places of its
    start-up on every rank, and Llama 3's tokenizer.json is 9 MB of JSON on a shared filesystem."""
    return Tokenizer(path)


class Tokenizer:
    """The tokenizer at ``path`` (a file or a directory holding one); ``backend`` says which library reads it.

    ``files`` are the files that a copy of it needs (what checkpoints carry); ``sha256`` identifies it in
    dataset indexes (the digest of its defining file, so that indexes of SentencePiece shards made before
    ``tokenizer.json`` was accepted still match).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = tokenizer_file(path)
        if self.path.suffix == ".json":
            self.backend: Literal["huggingface", "sentencepiece"] = "huggingface"
            self._load_huggingface()
        else:
            self.backend = "sentencepiece"
            self._load_sentencepiece()
        if self.eos_id is None:
            raise InvalidInput(f"{self.path} defines no EOS token; pretraining needs one to end documents")
        if self.bos_id is not None and self.bos_id != self.eos_id:
            self.boundary = Boundary(self.id_to_token(self.bos_id), self.bos_id, "before")
        else:
            self.boundary = Boundary(self.id_to_token(self.eos_id), self.eos_id, "after")

    def _load_sentencepiece(self) -> None:
        import sentencepiece as spm

        self.files = [self.path]
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.Load(str(self.path))
        except (OSError, RuntimeError):
            raise InvalidInput(self._not_sentencepiece()) from None
        self.bos_id = self.processor.bos_id() if self.processor.bos_id() >= 0 else None
        self.eos_id = self.processor.eos_id() if self.processor.eos_id() >= 0 else None
        self.vocab_size = self.processor.vocab_size()

    def _not_sentencepiece(self) -> str:
        with open(self.path, "rb") as f:
            first_line = f.readline(4096)
        if TIKTOKEN_LINE.match(first_line):
            return (
                f"{self.path} is a tiktoken rank file (Meta's original Llama 3 tokenizer.model), which is not read "
                f"here; pass the {HF_FILE} of the same model's Hugging Face release instead (PRETRAIN.md §2)"
            )
        return f"{self.path} is not a valid SentencePiece model; {WHAT_TO_PASS}"

    def _load_huggingface(self) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.hf = HFTokenizer.from_file(str(self.path))
        except Exception as error:  # the library raises a bare Exception for any unreadable file
            first = str(error).splitlines()[0] if str(error) else error.__class__.__name__
            raise InvalidInput(f"{self.path} is not a Hugging Face tokenizer.json ({first}); {WHAT_TO_PASS}") from None
        companions = [self.path.with_name(name) for name in HF_COMPANIONS]
        self.files = [self.path, *(path for path in companions if path.is_file())]
        vocab = self.hf.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        bos, eos = self._special_tokens(vocab)
        self.bos_id = vocab[bos] if bos is not None else None
        self.eos_id = vocab[eos] if eos is not None else None

    def _special_tokens(self, vocab: dict[str, int]) -> tuple[str | None, str | None]:
        """BOS and EOS as ``tokenizer_config.json`` names them, else the first of the usual names present."""
        config_path = self.path.with_name("tokenizer_config.json")
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except ValueError as error:
                raise InvalidInput(f"{config_path}: not valid JSON ({error})") from None
            named = []
            for key in ("bos_token", "eos_token"):
                token = config.get(key)
                token = token.get("content") if isinstance(token, dict) else token
                if token is not None and token not in vocab:
                    raise InvalidInput(f"{config_path}: {key} {token!r} is not in the vocabulary of {self.path}")
                named.append(token)
            if "eos_token" in config:
                return named[0], named[1]
        specials = {token.content for token in self.hf.get_added_tokens_decoder().values() if token.special}
        bos = next((name for name in BOS_NAMES if name in specials), None)
        eos = next((name for name in EOS_NAMES if name in specials), None)
        return bos, eos

    @functools.cached_property
    def sha256(self) -> str:
        """The identity recorded in dataset indexes: the digest of the defining file (read once)."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def id_to_token(self, token_id: int) -> str:
        if self.backend == "huggingface":
            return self.hf.id_to_token(token_id)
        return self.processor.id_to_piece(token_id)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """``text``'s ids, with BOS before (where the tokenizer has one) and EOS after when asked."""
        if self.backend == "sentencepiece":
            return self.processor.encode(text, add_bos=bos, add_eos=eos)
        return self._framed(self.hf.encode(text, add_special_tokens=False).ids, bos, eos)

    def encode_batch(
        self, texts: list[str], bos: bool = True, eos: bool = False, num_threads: int | None = None
    ) -> list[list[int]]:
        """Encode many texts at once on the library's own threads (the GIL is released).

        SentencePiece takes ``num_threads`` per call (default: all cores). The ``tokenizers`` library has one
        thread pool per process (all cores, or ``RAYON_NUM_THREADS``), which :func:`one_thread_per_process`
        switches off, as each preparation worker does: the workers are the parallelism.
        """
        if self.backend == "sentencepiece":
            threads = num_threads or os.cpu_count() or 1
            return self.processor.encode(texts, add_bos=bos, add_eos=eos, num_threads=threads)
        encodings = self.hf.encode_batch_fast(texts, add_special_tokens=False)
        return [self._framed(encoding.ids, bos, eos) for encoding in encodings]

    def encode_documents(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Each text as a packed document: its ids with the boundary token before or after them."""
        before = self.boundary.position == "before"
        return self.encode_batch(texts, bos=before, eos=not before, num_threads=num_threads)

    def _framed(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens left out (as SentencePiece does)."""
        if self.backend == "sentencepiece":
            return self.processor.decode(list(ids))
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def describe(self) -> str:
        return f"{self.path} ({self.backend}, {self.vocab_size:,} ids, boundary {self.boundary})"
