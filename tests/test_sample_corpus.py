"""The sample corpus goes through the real prepare scripts; GitHub documents are left out, nothing else."""

import gzip
import json
import subprocess
import sys

import datasets
import pyarrow.parquet as pq
import zstandard

from conftest import REPO_ROOT, TOKENIZER, run_prepare, shard_tokens, split_documents


def test_sample_corpus_prepares_with_the_real_scripts(tmp_path):
    sample = tmp_path / "sample"
    script = REPO_ROOT / "scripts" / "make_sample_corpus.py"
    subprocess.run([sys.executable, str(script), "--destination", str(sample)], check=True, capture_output=True)
    slim = sample / "SlimPajama-627B"

    records = []
    for path in sorted((slim / "validation").glob("chunk*/*.jsonl.zst")):
        lines = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read().decode().splitlines()
        records.extend(json.loads(line) for line in lines)
    github = [r["text"] for r in records if r["meta"]["redpajama_set_name"] == "RedPajamaGithub"]
    kept = [r["text"] for r in records if r["meta"]["redpajama_set_name"] != "RedPajamaGithub"]
    assert github and kept

    out = tmp_path / "slim_validation"
    args = ["--source_path", str(slim), "--split", "validation", "--destination_path", str(out)]
    result = run_prepare("prepare_slimpajama.py", *args)
    assert f"skipped {len(github)} x excluded meta.redpajama_set_name=RedPajamaGithub" in result.stdout
    assert split_documents(shard_tokens(out)) == [TOKENIZER.encode(text, bos=False) for text in kept]

    star = tmp_path / "star"
    run_prepare("prepare_starcoder.py", "--source_path", str(sample / "starcoderdata"), "--destination_path", str(star))
    documents = split_documents(shard_tokens(star))
    assert len(documents) > 100 and TOKENIZER.decode(documents[0]).strip()


def test_the_sample_layouts_of_other_corpora_prepare_to_an_independent_recount(tmp_path):
    """FineWeb-Edu's parquet, SkyPile's Chinese JSON lines, Dolma's json.gz and a datasets Arrow folder,
    each read with its own library and tokenized, equal the shards prepare_corpus.py writes."""
    sample = tmp_path / "sample"
    script = REPO_ROOT / "scripts" / "make_sample_corpus.py"
    subprocess.run([sys.executable, str(script), "--destination", str(sample)], check=True, capture_output=True)
    readers = {
        "fineweb-edu": lambda d: [
            t for p in sorted(d.rglob("*.parquet")) for t in pq.read_table(p)["text"].to_pylist()
        ],
        "SkyPile-150B": lambda d: [json.loads(line)["text"] for p in sorted(d.rglob("*.jsonl")) for line in open(p)],
        "dolma": lambda d: [json.loads(line)["text"] for p in sorted(d.glob("*.json.gz")) for line in gzip.open(p)],
        "cosmopedia-arrow": lambda d: datasets.load_from_disk(str(d))["text"],
    }
    for name, read in readers.items():
        out = tmp_path / name
        run_prepare(
            "prepare_corpus.py", "--source_path", str(sample / name), "--source", "s", "--destination_path", str(out)
        )
        expected = [text for text in read(sample / name) if text.strip()]
        assert len(expected) >= 100, name
        assert split_documents(shard_tokens(out)) == [TOKENIZER.encode(text, bos=False) for text in expected], name
    chinese = TOKENIZER.decode(split_documents(shard_tokens(tmp_path / "SkyPile-150B"))[0])
    assert "。" in chinese and chinese == readers["SkyPile-150B"](sample / "SkyPile-150B")[0]
