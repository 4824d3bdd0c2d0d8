"""Readers for the two TinyLlama corpora, which yield document texts and count what they skip.

SlimPajama-627B: ``{split}/chunk*/*.jsonl.zst``, one JSON object per line with ``text`` and
``meta.redpajama_set_name``. StarCoderData: ``<language>/*.parquet`` with a ``content`` column.
A bad document is skipped and counted by reason; a file that cannot be read at all raises
:class:`UnreadableFile`; a file that ends early keeps what was read and is counted as truncated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from lit_gpt.errors import MissingInput

MAX_EXAMPLES = 5
READ_SIZE = 1 << 20


class UnreadableFile(Exception):
    """No document of this file could be read (not the right format, unreadable, missing column)."""


@dataclass
class Skips:
    """Documents and files skipped, by reason, with the first few places for each reason."""

    counts: dict[str, int] = field(default_factory=dict)  # a plain dict: the manifest stores it as JSON
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        places = self.examples.setdefault(reason, [])
        if len(places) < MAX_EXAMPLES:
            places.append(where)

    def update(self, other: Skips) -> None:
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            places = self.examples.setdefault(reason, [])
            places.extend(other.examples.get(reason, [])[: MAX_EXAMPLES - len(places)])


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


def _encodable(text: str) -> bool:
    """False for text with lone surrogates (JSON can escape them), which have no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _zst_lines(path: Path) -> Iterator[bytes]:
    """Lines of a zstd-compressed file; raises EOFError if the compressed stream ends mid-frame."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    rest = b""
    with open(path, "rb") as f:
        while chunk := f.read(READ_SIZE):
            lines = (rest + decompressor.decompress(chunk)).split(b"\n")
            rest = lines.pop()
            yield from lines
    if not decompressor.eof:
        raise EOFError
    if rest:
        yield rest


def read_slimpajama(path: Path, skips: Skips, exclude_sets: frozenset[str]) -> Iterator[str]:
    """Document texts of one SlimPajama file, leaving out the RedPajama sets in ``exclude_sets``."""
    lineno = 0
    try:
        for lineno, line in enumerate(_zst_lines(path), start=1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                skips.add("invalid UTF-8", where)
                continue
            except json.JSONDecodeError:
                skips.add("malformed JSON", where)
                continue
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                skips.add("no text field", where)
                continue
            meta = record.get("meta")
            set_name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
            if set_name in exclude_sets:
                skips.add(f"excluded set {set_name}", where)
                continue
            if not text.strip():
                skips.add("empty document", where)
                continue
            if not _encodable(text):
                skips.add("invalid UTF-8", where)
                continue
            yield text
    except (zstandard.ZstdError, EOFError, OSError) as error:
        if lineno == 0:
            raise UnreadableFile(f"{path}: not a readable zstd file ({error or 'ends early'})") from None
        skips.add("truncated file", f"{path} after line {lineno}")


def read_starcoder(path: Path, skips: Skips) -> Iterator[str]:
    """Document texts (the ``content`` column) of one StarCoderData parquet file."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise UnreadableFile(f"{path}: not a readable parquet file ({error})") from None
    if "content" not in parquet.schema_arrow.names:
        raise UnreadableFile(f"{path}: no 'content' column (columns: {', '.join(parquet.schema_arrow.names)})")
    row = 0
    for group in range(parquet.num_row_groups):
        try:
            column = parquet.read_row_group(group, columns=["content"]).column("content")
        except (pa.ArrowException, OSError):
            count = parquet.metadata.row_group(group).num_rows
            skips.add("unreadable row group", f"{path} rows {row}-{row + count - 1}")
            row += count
            continue
        for text in column.to_pylist():
            if text is None:
                skips.add("no text field", f"{path} row {row}")
            elif not text.strip():
                skips.add("empty document", f"{path} row {row}")
            elif not _encodable(text):
                skips.add("invalid UTF-8", f"{path} row {row}")
            else:
                yield text
            row += 1
