"""Build a small sample corpus in the SlimPajama and StarCoderData layouts from Python's own files.

No download: the prose is Python's documentation (the ``pydoc`` topics and the standard library's
docstrings), the code is the standard library's sources and CPython's C headers. Some source files
go into the SlimPajama sample labelled ``RedPajamaGithub``, so the default exclusion has something
to exclude. The output is the same on every run with the same Python version.

    data/sample/SlimPajama-627B/{train,validation}/chunk1/example_{split}_{i}.jsonl.zst
    data/sample/starcoderdata/{python,c}/train-{i:05d}-of-{n:05d}.parquet
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from lit_gpt.cli import run

SKIPPED_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__"}


def stdlib_sources() -> list[tuple[Path, str]]:
    root = Path(sysconfig.get_path("stdlib"))
    paths = sorted(p for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(root).parts))
    sources = []
    for path in paths:
        try:
            sources.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return sources


def docstrings(sources: list[tuple[Path, str]], min_chars: int = 300) -> list[str]:
    texts = []
    for path, source in sources:
        try:
            tree = ast.parse(source, filename=str(path))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text) >= min_chars:
                    texts.append(text)
    return texts


def write_jsonl_zst(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path.write_bytes(zstandard.ZstdCompressor(level=10).compress(lines.encode("utf-8")))


def write_parquet_files(directory: Path, texts: list[str], num_files: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(num_files):
        table = pa.table({"content": texts[i::num_files]})
        pq.write_table(table, directory / f"train-{i:05d}-of-{num_files:05d}.parquet", row_group_size=100)


def make_sample_corpus(
    destination: Path = Path("data/sample"), code_files: int = 300, slimpajama_files: int = 8
) -> None:
    """Write the sample corpus under ``destination``.

    Args:
        destination: output directory; it holds ``SlimPajama-627B/`` and ``starcoderdata/``.
        code_files: standard-library source files put into the StarCoder sample.
        slimpajama_files: jsonl.zst files in the SlimPajama training split.
    """
    sources = stdlib_sources()
    prose = [("RedPajamaArXiv", text) for text in docstrings(sources)]
    prose += [("RedPajamaWikipedia", topics[name]) for name in sorted(topics)]
    github = [("RedPajamaGithub", source) for _, source in sources[1::25]]
    records = [{"text": text, "meta": {"redpajama_set_name": name}} for name, text in prose + github]
    splits = {"validation": records[::10], "train": [r for i, r in enumerate(records) if i % 10]}
    slim = destination / "SlimPajama-627B"
    for split, split_records in splits.items():
        count = slimpajama_files if split == "train" else 1
        for i in range(count):
            write_jsonl_zst(slim / split / "chunk1" / f"example_{split}_{i}.jsonl.zst", split_records[i::count])

    star = destination / "starcoderdata"
    write_parquet_files(star / "python", [source for _, source in sources[::2][:code_files]], num_files=4)
    headers = sorted(Path(sysconfig.get_path("include")).rglob("*.h"))
    write_parquet_files(star / "c", [p.read_text(encoding="utf-8", errors="replace") for p in headers], num_files=2)

    size = sum(p.stat().st_size for p in destination.rglob("*") if p.is_file())
    print(f"Wrote a {size / 1e6:.1f} MB sample corpus: {slim} and {star}")


if __name__ == "__main__":
    run(make_sample_corpus)
