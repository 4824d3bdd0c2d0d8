"""The sample corpus goes through the real prepare scripts; GitHub documents are left out, nothing else."""

import json
import subprocess
import sys

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
    assert f"skipped {len(github)} x excluded set RedPajamaGithub" in result.stdout
    assert split_documents(shard_tokens(out)) == [TOKENIZER.encode(text, bos=False) for text in kept]

    star = tmp_path / "star"
    run_prepare("prepare_starcoder.py", "--source_path", str(sample / "starcoderdata"), "--destination_path", str(star))
    documents = split_documents(shard_tokens(star))
    assert len(documents) > 100 and TOKENIZER.decode(documents[0]).strip()
