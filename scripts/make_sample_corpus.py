"""Build a small sample corpus in the layouts real corpora ship in, from Python's own files.

No download: the prose is Python's documentation (the ``pydoc`` topics and the standard library's
docstrings), the code is the standard library's sources and CPython's C headers, the Chinese text is
made of a fixed list of common words. Some source files go into the SlimPajama sample labelled
``RedPajamaGithub``, so the default exclusion has something to exclude. The output is the same on every
run with the same Python version.

    data/sample/SlimPajama-627B/{train,validation}/chunk1/example_{split}_{i}.jsonl.zst
    data/sample/starcoderdata/{python,jupyter-scripts-dedup-filtered,c}/train-{i:05d}-of-{n:05d}.parquet
    data/sample/fineweb-edu/sample/10BT/{i:03d}_00000.parquet       parquet, column text, row groups of 50
    data/sample/fineweb-edu/data/CC-MAIN-2024-10/000_00000.parquet  (the whole dataset's layout)
    data/sample/proof-pile-2/{arxiv,open-web-math}/{train,validation}/*.jsonl.zst
    data/sample/dclm-baseline-1.0/global-shard_01_of_10/local-shard_0_of_10/*.jsonl.zst
    data/sample/SkyPile-150B/data/*.jsonl                             Chinese, plain JSON lines
    data/sample/dolma/*.json.gz                                       gzip JSON lines
    data/sample/cosmopedia-arrow/                                     datasets.save_to_disk (if installed)
"""

from __future__ import annotations

import ast
import gzip
import json
import random
import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from lit_gpt.cli import run

SKIPPED_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
CHINESE_WORDS = (
    "我们 你们 他们 今天 明天 学习 工作 时间 问题 中国 世界 经济 发展 社会 文化 历史 科学 技术 教育 语言 "
    "数学 计算 模型 数据 城市 山水 春天 秋天 朋友 老师 学生 研究 方法 重要 简单 美丽 快乐 一个 这个 那个 "
    "可以 应该 已经 非常 因为 所以 但是 如果 而且 或者 喜欢 知道 认为 看到 听到 写作 阅读 思考 生活 自然"
).split()


def chinese_documents(count: int, seed: int = 0) -> list[str]:
    """Paragraphs of common Chinese words in random order: Chinese text for SkyPile's layout."""
    rng = random.Random(seed)

    def sentence() -> str:
        return "".join(rng.choices(CHINESE_WORDS, k=rng.randint(4, 12))) + "。"

    return ["".join(sentence() for _ in range(rng.randint(3, 20))) for _ in range(count)]


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


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")


def write_jsonl_zst(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(level=10).compress(jsonl(records)))


def write_other_layouts(destination: Path, prose: list[str], code: list[str]) -> list[Path]:
    """FineWeb-Edu (parquet), Proof Pile 2 and DCLM (jsonl.zst), SkyPile (jsonl), Dolma (json.gz) and an
    Arrow folder from ``datasets``; returns their folders."""
    fineweb = destination / "fineweb-edu"
    for i, (folder, texts) in enumerate([("sample/10BT", prose[::2]), ("sample/10BT", prose[1::2]),
                                         ("data/CC-MAIN-2024-10", prose[::5])]):  # fmt: skip
        table = pa.table({"text": texts, "id": [f"<urn:uuid:{i}-{j}>" for j in range(len(texts))]})
        table = table.append_column("score", pa.array([2.5 + (j % 3) / 2 for j in range(len(texts))]))
        (fineweb / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, fineweb / folder / f"{i % 2:03d}_00000.parquet", row_group_size=50)
    proof = destination / "proof-pile-2"
    for subset, texts in (("arxiv", prose[::3]), ("open-web-math", prose[1::3])):
        for split, part in (("train", texts[1:]), ("validation", texts[:1])):
            records = [{"text": text, "meta": {"subset": subset}} for text in part]
            write_jsonl_zst(proof / subset / split / f"{subset}_{split}_0000.jsonl.zst", records)
    dclm = destination / "dclm-baseline-1.0" / "global-shard_01_of_10" / "local-shard_0_of_10"
    records = [{"text": text, "url": f"https://example.org/{j}"} for j, text in enumerate(prose[2::5])]
    write_jsonl_zst(dclm / "shard_00000000_processed.jsonl.zst", records)
    skypile = destination / "SkyPile-150B" / "data"
    skypile.mkdir(parents=True, exist_ok=True)
    for i, texts in enumerate((chinese_documents(150, seed=1), chinese_documents(150, seed=2))):
        (skypile / f"2020-40_zh_head_{i:04d}.jsonl").write_bytes(jsonl([{"text": text} for text in texts]))
    dolma = destination / "dolma"
    dolma.mkdir(parents=True, exist_ok=True)
    records = [{"id": str(j), "text": text, "source": "code"} for j, text in enumerate(code[:100])]
    (dolma / "code-0000.json.gz").write_bytes(gzip.compress(jsonl(records), mtime=0))
    folders = [fineweb, proof, dclm.parents[1], skypile.parent, dolma]
    try:
        import datasets
    except ImportError:
        print("datasets is not installed: no Arrow sample (pip install datasets)")
        return folders
    arrow = destination / "cosmopedia-arrow"
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": prose[::4]}).save_to_disk(str(arrow), num_shards=2)
    return [*folders, arrow]


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
        destination: output directory; it holds ``SlimPajama-627B/``, ``starcoderdata/`` and the other
            layouts listed at the top of this script.
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
    write_parquet_files(star / "jupyter-scripts-dedup-filtered", [source for _, source in sources[1::40]], 1)
    headers = sorted(Path(sysconfig.get_path("include")).rglob("*.h"))
    write_parquet_files(star / "c", [p.read_text(encoding="utf-8", errors="replace") for p in headers], num_files=2)

    others = write_other_layouts(destination, [text for _, text in prose], [source for _, source in sources])

    size = sum(p.stat().st_size for p in destination.rglob("*") if p.is_file())
    print(f"Wrote a {size / 1e6:.1f} MB sample corpus: {', '.join(map(str, [slim, star, *others]))}")


if __name__ == "__main__":
    run(make_sample_corpus)
