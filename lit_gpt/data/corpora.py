"""Which files make a corpus and which field of their records is a document.

``corpus_files`` finds the files of any layout (a folder searched for corpus files, or glob patterns);
``slimpajama_files`` and ``starcoder_files`` are the two TinyLlama layouts, SlimPajama-627B's
``{split}/chunk*/*.jsonl.zst`` and StarCoderData's ``<language>/*.parquet``. ``Documents`` turns the
records of a piece (:mod:`lit_gpt.data.formats`) into document texts, leaving out and counting what
is not one: no text, text that is not a string, an excluded value, an empty text, text with no UTF-8
form.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lit_gpt.data.formats import KINDS, Piece, UnreadableFile, file_kind, pieces, records
from lit_gpt.data.skips import Skips
from lit_gpt.errors import MissingInput

METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json"}  # beside datasets' Arrow files


@dataclass(frozen=True)
class Documents:
    """The document of a record is its ``text_column`` (a dotted path reaches into nested records);
    a record whose field in ``exclude`` holds one of the listed values is left out (compared as text),
    e.g. ``{"meta.redpajama_set_name": ["RedPajamaGithub"]}``."""

    text_column: str = "text"
    exclude: dict[str, list[str]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """The top-level columns read from parquet and Arrow files."""
        return list(dict.fromkeys(name.split(".")[0] for name in [self.text_column, *self.exclude]))

    def settings(self) -> dict:
        return {"text_column": self.text_column, "exclude": {k: sorted(v) for k, v in sorted(self.exclude.items())}}

    def texts(self, piece: Piece, skips: Skips) -> Iterator[str]:
        """The documents of one piece, in order; everything else is counted in ``skips``."""
        excluded = {name: set(values) for name, values in self.exclude.items()}
        for where, record in records(piece, self.columns, skips):
            text = field_value(record, self.text_column)
            if text is None:
                skips.add("no text field", where)
                continue
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    skips.add("invalid UTF-8", where)
                    continue
            if not isinstance(text, str):
                skips.add("text not a string", where)
                continue
            reason = next(
                (f"excluded {name}={value}" for name, values in excluded.items()
                 if (value := field_value(record, name)) is not None and str(value) in values),
                None,
            )  # fmt: skip
            if reason is not None:
                skips.add(reason, where)
            elif not text.strip():
                skips.add("empty document", where)
            elif not _encodable(text):
                skips.add("invalid UTF-8", where)
            else:
                yield text

    def of_file(self, path: Path, skips: Skips) -> Iterator[str]:
        """The documents of a whole file, piece after piece (for tools that take a file at a time)."""
        for piece in pieces(path, self.columns):
            if piece.error is not None:
                raise UnreadableFile(piece.error)
            yield from self.texts(piece, skips)


def slimpajama_documents(exclude_sets: list[str]) -> Documents:
    """SlimPajama's records: ``text``, without the RedPajama sets named (``meta.redpajama_set_name``)."""
    return Documents("text", {"meta.redpajama_set_name": exclude_sets} if exclude_sets else {})


def field_value(record: object, path: str) -> object:
    """``record["a"]["b"]`` for the path ``a.b``; None where a level is missing or not a mapping."""
    for name in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(name)
    return record


def _encodable(text: str) -> bool:
    """False for text with lone surrogates (JSON can escape them), which have no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def corpus_files(source_path: Path, patterns: list[str] | None = None) -> list[Path]:
    """The corpus files under ``source_path`` in sorted order: those matching ``patterns`` (globs relative
    to it, ``**`` for any depth), or every corpus file below it (hidden folders such as the ``.cache`` of
    ``hf download`` and ``datasets``' metadata left out; other files reported and ignored)."""
    if source_path.is_file():
        found = [source_path]
    elif not source_path.is_dir():
        raise MissingInput(f"No corpus at {source_path}: no such file or folder")
    elif patterns:
        found = sorted({path for pattern in patterns for path in source_path.glob(pattern) if not path.is_dir()})
        if not found:
            raise MissingInput(f"No input files: nothing under {source_path} matches {' or '.join(patterns)}")
    else:
        found = sorted(
            path
            for path in source_path.rglob("*")
            if not path.is_dir() and not any(part.startswith(".") for part in path.relative_to(source_path).parts)
        )
        others = [path for path in found if file_kind(path) is None or path.name in METADATA_FILES]
        if others:
            print(f"Ignored {len(others)} files of other kinds under {source_path}, e.g. {others[0].name}")
            ignored = set(others)  # once: a set built inside the filter below would be built per file
            found = [path for path in found if path not in ignored]
        if not found:
            raise MissingInput(f"No corpus files ({KINDS}) under {source_path}")
    return found


def slimpajama_files(source_path: Path, split: str) -> list[Path]:
    files = sorted((source_path / split).glob("chunk*/*.jsonl.zst"))
    if not files:
        raise MissingInput(
            f"No input files for the slimpajama {split} split: nothing matches {source_path / split}/chunk*/*.jsonl.zst"
        )
    return files


def starcoder_files(source_path: Path, languages: list[str] | None) -> list[Path]:
    missing = [language for language in languages or [] if not (source_path / language).is_dir()]
    if missing:
        raise MissingInput(f"No StarCoder language directory {source_path / missing[0]}")
    patterns = [f"{language}/*.parquet" for language in languages] if languages else ["*/*.parquet"]
    files = sorted(path for pattern in patterns for path in source_path.glob(pattern))
    if not files:
        raise MissingInput(f"No input files for starcoder: nothing matches {source_path}/{' or '.join(patterns)}")
    return files
