"""The dataset index: every shard's name, token count, dtype, largest token id and checksum, read once at
start-up.

Without an index a loader must open every shard to learn its length: 400,000 opens per rank, repeated at
every start, on a shared filesystem with every rank starting at once. With one it reads a few files.

An index file is JSON laid out by column, so that 300,000 shards parse in a fraction of a second::

    {"version": 3, "tokenizer_sha256": "..." or null,
     "boundary": {"token": "<s>", "id": 1, "position": "before"} or null,
     "names": [...], "tokens": [...], "dtypes": ["uint16", ...], "max_ids": [...], "crc32": [...]}

``crc32`` is the CRC-32 of each shard's token bytes (``lit_gpt.data.shards.checksum``), computed while
the shard is written; the loader verifies it when it first opens the shard. ``boundary`` is the token that
separates the documents and whether it comes before or after each (``lit_gpt.tokenizer.Boundary``).
Older versions are read as they are: version 1 (before checksums) with the checksums unknown, versions 1
and 2 (before ``tokenizer.json`` was accepted, when every shard was SentencePiece with BOS before each
document) with the boundary unknown.

Preparation writes ``{split}_{source}_{machine}.index.json`` for the shards its job wrote (several
machines fill one directory without sharing a file); ``scripts/index_shards.py`` writes ``index.json``
for shards made elsewhere, or after shards were removed or replaced on purpose, and then it replaces the
directory's other index files. A directory's index is the union of its index files.

The fingerprint of a data source -- the digest of its shard names and token counts -- goes into every
checkpoint, so that a resume on other data is noticed; the names and counts themselves go once per run
into the run's manifests, so that the change can be explained.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lit_gpt.data.shards import checksum, read_header, read_shard
from lit_gpt.errors import InvalidInput, MissingInput
from lit_gpt.tokenizer import Tokenizer

INDEX_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
INDEX_NAME = "index.json"
INDEX_SUFFIX = ".index.json"


def is_index_file(name: str) -> bool:
    return name == INDEX_NAME or name.endswith(INDEX_SUFFIX)


@dataclass
class ShardTable:
    """Shards by column. ``max_ids`` is -1 where the largest id is unknown (a shard read by header only),
    ``checksums`` -1 where the checksum is (an index from before checksums, or no index)."""

    names: list[str]
    tokens: np.ndarray
    dtypes: list[str]
    max_ids: np.ndarray
    checksums: np.ndarray

    @classmethod
    def empty(cls) -> ShardTable:
        return cls([], np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def concatenate(cls, tables: Sequence[ShardTable]) -> ShardTable:
        return cls(
            [name for table in tables for name in table.names],
            np.concatenate([table.tokens for table in tables] or [np.zeros(0, np.int64)]).astype(np.int64),
            [dtype for table in tables for dtype in table.dtypes],
            np.concatenate([table.max_ids for table in tables] or [np.zeros(0, np.int64)]).astype(np.int64),
            np.concatenate([table.checksums for table in tables] or [np.zeros(0, np.int64)]).astype(np.int64),
        )

    def take(self, order: Sequence[int] | np.ndarray) -> ShardTable:
        order = np.asarray(order, dtype=np.int64)
        return ShardTable(
            [self.names[i] for i in order],
            self.tokens[order],
            [self.dtypes[i] for i in order],
            self.max_ids[order],
            self.checksums[order],
        )

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:
        """Pickled compactly, as it is broadcast to every rank: the names joined into one string and the
        dtypes as codes, so that unpickling makes a few objects instead of two per shard (NUL is in no file name)."""
        kinds, codes = np.unique(np.array(self.dtypes, dtype=str), return_inverse=True)
        columns = {"tokens": self.tokens, "max_ids": self.max_ids, "checksums": self.checksums}
        return {"names": "\0".join(self.names), "kinds": kinds.tolist(), "codes": codes.astype(np.uint8)} | columns

    def __setstate__(self, state: dict) -> None:
        kinds = state.pop("kinds")
        names, codes = state.pop("names"), state.pop("codes")
        self.names = names.split("\0") if names else []
        self.dtypes = [kinds[code] for code in codes.tolist()]
        self.__dict__.update(state)


@dataclass(frozen=True)
class TokenizerRecord:
    """What an index file says of the tokenizer its shards were made with: the digest of its defining file
    and the document boundary (each None where unknown)."""

    sha256: str | None
    boundary: dict | None = None

    def agrees_with(self, other: TokenizerRecord) -> bool:
        """The same tokenizer, where both say (an index from before boundaries were recorded says nothing)."""
        boundaries = (self.boundary, other.boundary)
        return self.sha256 == other.sha256 and (None in boundaries or boundaries[0] == boundaries[1])

    def __str__(self) -> str:
        boundary = self.boundary or {}
        where = f", {boundary['token']} {boundary['position']} each document" if boundary else ""
        return f"sha256 {(self.sha256 or 'unknown')[:12]}{where}"


@dataclass
class Index:
    """One index file: its shards and the tokenizer they were made with (None where unknown)."""

    shards: ShardTable
    tokenizer_sha256: str | None = None
    boundary: dict | None = None

    @property
    def tokenizer(self) -> TokenizerRecord:
        return TokenizerRecord(self.tokenizer_sha256, self.boundary)

    def write(self, path: Path) -> None:
        """Atomically: readers see the old file or the new one, never a part."""
        content = {
            "version": INDEX_VERSION,
            "tokenizer_sha256": self.tokenizer_sha256,
            "boundary": self.boundary,
            "names": self.shards.names,
            "tokens": self.shards.tokens.tolist(),
            "dtypes": self.shards.dtypes,
            "max_ids": self.shards.max_ids.tolist(),
            "crc32": self.shards.checksums.tolist(),
        }
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(content, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> Index:
        try:
            content = json.loads(path.read_text())
            if content.get("version") not in READABLE_VERSIONS:
                raise InvalidInput(f"unsupported index version {content.get('version')!r} (expected {INDEX_VERSION})")
            names, tokens, dtypes, max_ids = (content[k] for k in ("names", "tokens", "dtypes", "max_ids"))
            checksums = content["crc32"] if content["version"] >= 2 else [-1] * len(names)
            if not len(names) == len(tokens) == len(dtypes) == len(max_ids) == len(checksums):
                raise InvalidInput("its columns differ in length")
        except (ValueError, KeyError, TypeError) as error:
            message = f"{path}: not a usable shard index ({error}); rebuild it with scripts/index_shards.py"
            raise InvalidInput(message) from None
        table = ShardTable(
            names,
            np.array(tokens, dtype=np.int64),
            dtypes,
            np.array(max_ids, dtype=np.int64),
            np.array(checksums, dtype=np.int64),
        )
        return cls(table, content.get("tokenizer_sha256"), content.get("boundary"))


def shard_names(names: Iterable[str], prefix: str = "") -> list[str]:
    """The shards among a directory listing, sorted; hidden files are pending tokens or temporary files."""
    shards = [n for n in names if n.endswith(".bin") and n[0] != "."]
    return sorted([n for n in shards if n.startswith(prefix)] if prefix else shards)


def scan_shard(path: Path) -> tuple[int, str, int, int]:
    """(token count, dtype, largest token id, checksum) of one shard, reading all of it."""
    tokens = read_shard(path)
    return len(tokens), str(tokens.dtype), int(tokens.max()) if len(tokens) else -1, checksum(tokens)


@dataclass
class Reindexing:
    """What :func:`index_directory` wrote and what it found against the index files it replaced."""

    path: Path
    index: Index
    replaced: list[str]  # the other index files of the directory, removed: index.json now holds their entries
    missing: list[str]  # shards they listed that are no longer there (left out)
    changed: list[str]  # shards whose content differs from the checksum they recorded (indexed as they are)


def index_directory(
    directory: Path, prefix: str = "", tokenizer_path: Path | None = None, num_workers: int = 1
) -> Reindexing:
    """Read every shard of ``directory`` (with ``prefix``) once and write ``index.json`` for them.

    ``index.json`` becomes the directory's one index: the entries of its other index files (preparation's
    ``*.index.json``) for present shards outside ``prefix`` are carried over, their tokenizer record too,
    and the files are removed, so that a shard removed on purpose stops being listed anywhere. Every
    rescanned shard is compared with the checksum they recorded, and the differences are reported.
    """
    listing = os.listdir(directory)
    names = shard_names(listing, prefix)
    if not names:
        raise MissingInput(f"{directory} holds no{' ' + prefix + '*' if prefix else ''} .bin shards to index")
    old_files = sorted((n for n in listing if is_index_file(n)), key=lambda name: (name != INDEX_NAME, name))
    old = {name: Index.read(directory / name) for name in old_files}
    paths = [directory / name for name in names]
    with multiprocessing.get_context("spawn").Pool(num_workers) if num_workers > 1 else nullcontext() as pool:
        scanned = pool.imap(scan_shard, paths, chunksize=16) if pool else map(scan_shard, paths)
        stats = list(tqdm(scanned, total=len(paths), unit="shard", desc=f"indexing {directory}"))
    table = ShardTable(
        names,
        np.array([stat[0] for stat in stats], dtype=np.int64),
        [stat[1] for stat in stats],
        np.array([stat[2] for stat in stats], dtype=np.int64),
        np.array([stat[3] for stat in stats], dtype=np.int64),
    )
    recorded = {name: index.tokenizer for name, index in old.items() if index.tokenizer_sha256 is not None}
    tokenizer = _one_tokenizer(directory, recorded)
    if tokenizer_path:
        given = Tokenizer(tokenizer_path)
        tokenizer = TokenizerRecord(given.sha256, given.boundary.to_dict())
        for name, record in recorded.items():
            if not record.agrees_with(tokenizer):
                raise InvalidInput(
                    f"{directory / name} records another tokenizer ({record}) than --tokenizer_path {tokenizer_path} "
                    f"({tokenizer}): give the tokenizer that made the shards, or remove {name} if they were remade"
                )
    first_record: dict[str, tuple[ShardTable, int]] = {}  # index.json's entry first, as the loader reads them
    for index in old.values():
        for i, name in enumerate(index.shards.names):
            first_record.setdefault(name, (index.shards, i))
    changed = [
        name
        for name, value in zip(names, table.checksums.tolist(), strict=True)
        if name in first_record and 0 <= int(first_record[name][0].checksums[first_record[name][1]]) != value
    ]
    present = set(shard_names(listing))
    carried: dict[int, tuple[ShardTable, list[int]]] = {}  # per old index file: its rows outside the prefix
    for name, (shards, row) in first_record.items():
        if name in present and not name.startswith(prefix):
            carried.setdefault(id(shards), (shards, []))[1].append(row)
    if carried:
        table = ShardTable.concatenate([table, *(shards.take(rows) for shards, rows in carried.values())])
        table = table.take(np.argsort(np.array(table.names), kind="stable"))
    index = Index(table, tokenizer.sha256, tokenizer.boundary) if tokenizer else Index(table)
    path = directory / INDEX_NAME
    index.write(path)
    replaced = [name for name in old_files if name != INDEX_NAME]
    for name in replaced:
        (directory / name).unlink()
    missing = sorted(name for name in first_record if name not in present)
    return Reindexing(path, index, replaced, missing, changed)


def index_files_listing(directory: Path, shard: str) -> list[str]:
    """The index files of ``directory`` that list ``shard`` (for a message: each file is read again)."""
    files = sorted(name for name in os.listdir(directory) if is_index_file(name))
    return [name for name in files if shard in Index.read(directory / name).shards.names]


def header_table(directory: Path, names: Sequence[str]) -> ShardTable:
    """Token counts and dtypes from the shards' headers (largest ids unknown): the slow path, one open each."""
    headers = [read_header(directory / name) for name in names]
    return ShardTable(
        list(names),
        np.array([count for _, count in headers], dtype=np.int64),
        [str(dtype) for dtype, _ in headers],
        np.full(len(names), -1, dtype=np.int64),
        np.full(len(names), -1, dtype=np.int64),
    )


def _one_tokenizer(directory: Path, tokenizers: dict[str, TokenizerRecord]) -> TokenizerRecord | None:
    """The tokenizer that the index files (by name) record, refused naming two files that disagree."""
    # Against the first record that names a boundary (else the first): all agree with it iff all agree.
    named = [item for item in tokenizers.items() if item[1].boundary is not None] or list(tokenizers.items())
    first, record = named[0] if named else (None, None)
    other = next((name for name, recorded in tokenizers.items() if not recorded.agrees_with(record)), None)
    if other is not None:
        raise InvalidInput(
            f"{directory}: index files of two tokenizers, {first} ({record}) and {other} ({tokenizers[other]}); "
            "a dataset directory holds shards of one tokenizer"
        )
    return record


def read_directory_index(
    directory: Path, index_files: Iterable[str], prefix: str = ""
) -> tuple[ShardTable, dict[str, TokenizerRecord]]:
    """The union of a directory's index files restricted to names starting with ``prefix``, and the
    tokenizer each of them records (by file name, where it records one), which must be one tokenizer. A
    shard listed twice must be listed with the same size; ``index.json`` (an explicit re-index) comes
    first, so its checksums are the ones verified."""
    tables, tokenizers = [], {}
    for name in sorted(index_files, key=lambda name: (name != INDEX_NAME, name)):
        index = Index.read(directory / name)
        shards = index.shards
        if prefix:
            shards = shards.take([i for i, shard in enumerate(shards.names) if shard.startswith(prefix)])
        if len(shards):
            tables.append(shards)
            if index.tokenizer_sha256 is not None:
                tokenizers[name] = index.tokenizer
    _one_tokenizer(directory, tokenizers)
    table = tables[0] if len(tables) == 1 else ShardTable.concatenate(tables)
    if len(set(table.names)) == len(table.names):
        return table, tokenizers
    first: dict[str, int] = {}
    for i, name in enumerate(table.names):
        j = first.setdefault(name, i)
        if (table.tokens[i], table.dtypes[i]) != (table.tokens[j], table.dtypes[j]):
            message = f"{directory}: the index files disagree about shard {name}; rebuild with index_shards.py"
            raise InvalidInput(message)
    return table.take(sorted(first.values())), tokenizers


@dataclass
class Fingerprint:
    """What a data source holds: its shard names and token counts, and their digest.

    A checkpoint records the :meth:`summary` (digest and totals: a few bytes, whatever the shard count);
    the full lists go once per run into a manifest named by the digest, read only to explain a change.
    """

    names: list[str]
    tokens: list[int]

    @functools.cached_property
    def digest(self) -> str:
        lines = "".join(f"{name}\t{count}\n" for name, count in zip(self.names, self.tokens, strict=True))
        return hashlib.sha256(lines.encode()).hexdigest()

    def summary(self) -> dict:
        return {"digest": self.digest, "shards": len(self.names), "tokens": sum(self.tokens)}

    def to_dict(self) -> dict:
        return {"digest": self.digest, "names": self.names, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, content: dict) -> Fingerprint:
        return cls(list(content["names"]), [int(t) for t in content["tokens"]])

    def changes_since(self, old: Fingerprint) -> str | None:
        """What changed from ``old`` to this one, in words; None if nothing did."""
        if self.digest == old.digest:
            return None
        before, after = dict(zip(old.names, old.tokens, strict=True)), dict(zip(self.names, self.tokens, strict=True))
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        resized = sorted(name for name in set(before) & set(after) if before[name] != after[name])
        parts = []
        for what, names in (("added", added), ("removed", removed), ("resized", resized)):
            if names:
                parts.append(f"{len(names):,} shard(s) {what} (e.g. {', '.join(names[:3])})")
        return "; ".join(parts) or "the shard order changed"
