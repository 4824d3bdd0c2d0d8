"""The file formats corpora ship in, cut into bounded pieces whose records are read one piece at a time.

A corpus file is JSON lines (plain, gzip or zstd), parquet, or Arrow (``datasets.save_to_disk``). The
name says which; the first bytes must agree (a ``.zst`` file that is not zstd, or parquet named
``.jsonl``, is refused naming it), and they decide the compression of JSON lines.

Preparation's unit of work is a *piece*: a parquet row group, a run of Arrow record batches, or a run
of whole JSON lines of about ``PIECE_BYTES``. A worker holds one piece, never a whole file, so a 2 GB
file prepares in the memory of a small one. Pieces are cut from the file's content alone, never from
the number of workers, so the output does not depend on how many there are. Parquet and Arrow pieces
are addressed (row group, batch range) and read by the worker; a compressed stream cannot be entered
in the middle, so JSON-lines pieces are cut by the main process as it decompresses and carry their
bytes to the worker (decompression runs at hundreds of MB/s, tokenization at a few MB/s per core).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from lit_gpt.data.skips import Skips

PIECE_BYTES = 8 << 20  # JSON lines (decompressed) or Arrow record batches per piece
READ_SIZE = 1 << 17  # compressed bytes read at once: a few MB decompressed
NEWLINE = b"\n"
LINE_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSED_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
KINDS = "parquet, .arrow, .jsonl / .ndjson / .json (plain, .gz or .zst)"
MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd", "parquet": b"PAR1", "Arrow": b"ARROW1"}
ARROW_STREAM = b"\xff\xff\xff\xff"  # the continuation marker that starts an Arrow IPC stream


class UnreadableFile(Exception):
    """No document of this file could be read (not the right format, unreadable, missing column)."""


@dataclass(frozen=True)
class Piece:
    """One unit of work, the ``number``-th piece of ``path`` (from 0).

    ``first`` is the number of rows (or lines) of the file before it; ``start``/``stop`` are its range
    of row groups (parquet) or record batches (Arrow); ``lines`` carries a JSON-lines piece's bytes.
    ``through`` is how far into the file on disk it reaches (for the progress bar). ``truncated`` and
    ``error`` are problems found while cutting: the stream ends early after this piece, or the file
    cannot be read at all; they count when the piece is taken, so a resumed job counts them once.
    """

    path: Path
    kind: str
    number: int
    first: int = 0
    start: int = 0
    stop: int = 0
    lines: bytes = b""
    through: int = 0
    truncated: str | None = None
    error: str | None = None
    last: bool = False


def file_kind(path: Path) -> str | None:
    """``lines``, ``parquet`` or ``arrow`` from the file's name; None for a file of another kind."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in LINE_SUFFIXES:
        return "lines"
    return {".parquet": "parquet", ".arrow": "arrow"}.get(last)


def describe(head: bytes) -> str:
    """What the first bytes of a file say it is."""
    found = next((name for name, magic in MAGIC.items() if head.startswith(magic)), None)
    if found is None and head.startswith(ARROW_STREAM):
        found = "Arrow"
    return f"its content is {found}" if found else f"it starts with {head[:8]!r}" if head else "it is empty"


def compression(path: Path) -> str | None:
    """The compression of a JSON-lines file (``gzip``, ``zstd`` or None), read from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    found = next((name for name in ("gzip", "zstd") if head.startswith(MAGIC[name])), None)
    named = COMPRESSED_SUFFIXES.get(path.suffix.lower())
    if named is not None and named != found:
        raise UnreadableFile(f"{path}: not a readable {named} file ({describe(head)})")
    if found is None and describe(head).startswith("its content is"):
        raise UnreadableFile(f"{path}: named as JSON lines but {describe(head)}")
    return found


def pieces(path: Path, columns: list[str]) -> Iterator[Piece]:
    """The pieces of one file in order, the last one marked; a file that cannot be read at all gives
    one piece with ``error`` set. ``columns``: the top-level columns a parquet or Arrow file must have."""
    kind = file_kind(path)
    if kind is None:
        yield Piece(path, "unknown", 0, error=f"{path}: not a corpus file (the kinds read: {KINDS})", last=True)
        return
    cut = {"lines": _line_pieces, "parquet": _parquet_pieces, "arrow": _arrow_pieces}[kind]
    try:
        upcoming = cut(path, columns)
        previous = next(upcoming, None)
        if previous is None:  # no record at all: one empty piece, so that the file still counts as done
            previous = Piece(path, kind, 0)
        for piece in upcoming:
            yield previous
            previous = piece
    except UnreadableFile as error:
        yield Piece(path, kind, 0, error=str(error), last=True)
        return
    except (pa.ArrowException, OSError) as error:
        yield Piece(path, kind, 0, error=f"{path}: not a readable {kind} file ({error})", last=True)
        return
    yield dataclasses.replace(previous, last=True)


def _parquet_pieces(path: Path, columns: list[str]) -> Iterator[Piece]:
    """One piece per row group (the unit parquet is written and compressed in)."""
    metadata = pq.ParquetFile(path).metadata
    _check_columns(path, metadata.schema.to_arrow_schema().names, columns)
    size, first, groups = path.stat().st_size, 0, metadata.num_row_groups
    for group in range(groups):
        yield Piece(path, "parquet", group, first, group, group + 1, through=size * (group + 1) // groups)
        first += metadata.row_group(group).num_rows


def _arrow_pieces(path: Path, columns: list[str]) -> Iterator[Piece]:
    """Runs of record batches of about PIECE_BYTES (``datasets`` writes batches of 1,000 rows)."""
    with ArrowBatches(path) as (schema, batches):
        _check_columns(path, schema.names, columns)
        ranges, start, first, rows, nbytes = [], 0, 0, 0, 0
        for index, batch in enumerate(batches):  # memory-mapped: this reads batch headers, not the data
            rows, nbytes = rows + batch.num_rows, nbytes + batch.nbytes
            if nbytes >= PIECE_BYTES:
                ranges.append((first, start, index + 1))
                start, first, rows, nbytes = index + 1, first + rows, 0, 0
        if rows:
            ranges.append((first, start, index + 1))
    size = path.stat().st_size
    for number, (first, start, stop) in enumerate(ranges):
        yield Piece(path, "arrow", number, first, start, stop, through=size * (number + 1) // len(ranges))


def _check_columns(path: Path, names: list[str], columns: list[str]) -> None:
    missing = [column for column in columns if column not in names]
    if missing:
        raise UnreadableFile(f"{path}: no {missing[0]!r} column (columns: {', '.join(names)})")


class ArrowBatches:
    """``with ArrowBatches(path) as (schema, batches)``: an Arrow file or stream, memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        self.source = pa.memory_map(str(self.path))
        head = self.source.read(8)
        self.source.seek(0)
        if head.startswith(MAGIC["Arrow"]):
            reader = pa.ipc.open_file(self.source)
            return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
        if head.startswith(ARROW_STREAM):
            reader = pa.ipc.open_stream(self.source)
            return reader.schema, iter(reader)
        self.source.close()
        raise UnreadableFile(f"{self.path}: named as Arrow but {describe(head)}")

    def __exit__(self, *exc) -> None:
        self.source.close()


def _line_pieces(path: Path, columns: list[str]) -> Iterator[Piece]:
    """Runs of whole lines, each ending at the first line end at or after PIECE_BYTES (so the cuts
    depend on the content alone). A stream that ends early keeps its whole lines, drops the partial
    last one and marks its last piece truncated; one that gives no line at all is unreadable."""
    stream = compression(path)
    number, first, buffer = 0, 0, bytearray()
    with open(path, "rb") as raw:
        try:
            for block in _decompressed(raw, stream):
                buffer += block
                while (cut := buffer.find(NEWLINE, PIECE_BYTES - 1) + 1) > 0:
                    data = bytes(buffer[:cut])
                    del buffer[:cut]
                    yield Piece(path, "lines", number, first, lines=data, through=raw.tell())
                    number, first = number + 1, first + data.count(NEWLINE)
        except (zstandard.ZstdError, EOFError, OSError, zlib.error) as error:
            data = bytes(buffer[: buffer.rfind(NEWLINE) + 1])
            if not number and not data:
                raise UnreadableFile(f"{path}: not a readable {stream} file ({error or 'ends early'})") from None
            after = f"{path} after line {first + data.count(NEWLINE)}"
            yield Piece(path, "lines", number, first, lines=data, through=raw.tell(), truncated=after)
            return
        if buffer:
            yield Piece(path, "lines", number, first, lines=bytes(buffer), through=raw.tell())


def _decompressed(raw, stream: str | None) -> Iterator[bytes]:
    """Decompressed blocks of an open file; raises EOFError if a compressed stream ends mid-frame."""
    if stream == "gzip":
        with gzip.GzipFile(fileobj=raw) as f:
            while block := f.read(READ_SIZE):
                yield block
        return
    if stream is None:
        while chunk := raw.read(READ_SIZE):
            yield chunk
        return
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    while chunk := raw.read(READ_SIZE):
        while chunk:  # a file of several frames (pzstd, concatenated files): one decompressor per frame
            yield decompressor.decompress(chunk)
            chunk = decompressor.unused_data if decompressor.eof else b""
            if chunk:
                decompressor = zstandard.ZstdDecompressor().decompressobj()
    if not decompressor.eof:
        raise EOFError


def records(piece: Piece, columns: list[str], skips: Skips) -> Iterator[tuple[str, object]]:
    """``(where, record)`` for each record of a piece, in order: a JSON line's value (``where`` is
    ``path:line``; blank lines are passed over, lines that are not JSON or not UTF-8 counted in
    ``skips``), or a row as a dict of ``columns`` (``where`` is ``path row N``). An unreadable row
    group is counted with its rows."""
    if piece.kind == "lines":
        for offset, line in enumerate(piece.lines.split(b"\n")):
            if not line.strip():
                continue
            where = f"{piece.path}:{piece.first + offset + 1}"
            try:
                yield where, json.loads(line)
            except UnicodeDecodeError:
                skips.add("invalid UTF-8", where)
            except json.JSONDecodeError:
                skips.add("malformed JSON", where)
        return
    row = piece.first
    try:
        for batch in _column_batches(piece, columns):
            values = [batch.column(name).to_pylist() for name in columns]
            for record in zip(*values, strict=True):
                yield f"{piece.path} row {row}", dict(zip(columns, record, strict=True))
                row += 1
    except (pa.ArrowException, OSError):
        if piece.kind != "parquet" or row != piece.first:
            raise
        count = pq.ParquetFile(piece.path).metadata.row_group(piece.start).num_rows
        skips.add("unreadable row group", f"{piece.path} rows {row}-{row + count - 1}")


def _column_batches(piece: Piece, columns: list[str]) -> Iterator[pa.Table | pa.RecordBatch]:
    if piece.kind == "parquet":
        yield pq.ParquetFile(piece.path).read_row_group(piece.start, columns=columns)
        return
    with ArrowBatches(piece.path) as (_, batches):
        for index, batch in enumerate(batches):
            if index >= piece.stop:
                break
            if index >= piece.start:
                yield batch.select(columns)
