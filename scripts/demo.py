"""The whole pipeline on one CPU in a few minutes: corpus, tokenization, pretraining, conversion, sampling.

    pip install -e '.[demo]' && python scripts/demo.py
    python scripts/demo.py --tokenizer_path assets/tokenizer-bpe   # the same with a tokenizer.json

1. builds a ~3 MB sample corpus in the SlimPajama and StarCoderData layouts from Python's own files;
2. tokenizes both with the real prepare scripts and the repository's demo tokenizer (SentencePiece, or
   its byte-level BPE tokenizer.json twin);
3. pretrains the 5M-parameter tiny_LLaMA_5M on the 7:3 mixture (pretrain/configs/cpu_demo.yaml);
4. plots the loss curves, converts the last checkpoint to a Hugging Face directory, loads it with
   transformers and prints a sampled continuation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from lit_gpt.cli import run
from lit_gpt.errors import OutputExists

REPO = Path(__file__).resolve().parents[1]
CHUNK = str(257 * 1024)  # shards of 1024 blocks of the demo model's block_size + 1
MARKER = ".made-by-demo"  # in each folder the demo made, so that a rerun may replace it


def step(title: str, *command: str) -> None:
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True, cwd=REPO)
    print(f"--- done in {time.perf_counter() - start:.0f} s", flush=True)


def claim(directory: Path, overwrite: bool) -> None:
    """Make ``directory`` empty for the demo: a folder that an earlier demo made is replaced; any other
    non-empty folder (a real corpus, say) only with ``overwrite``."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).is_file() and not overwrite:
            raise OutputExists(
                f"{directory} is not empty and was not made by the demo; choose another folder, or pass "
                "--overwrite true to delete what it holds"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).touch()


def demo(
    data_dir: Path = Path("data/demo"),
    out_dir: Path = Path("out/demo"),
    max_steps: int | None = None,
    overwrite: bool = False,
    tokenizer_path: Path = Path("assets/tokenizer"),
) -> None:
    """Run the demo; everything it writes goes under ``data_dir`` and ``out_dir``.

    Args:
        data_dir: sample corpus and shards; replaced if an earlier demo made it.
        out_dir: checkpoints, metrics, plot and the Hugging Face model; replaced if an earlier demo made it.
        max_steps: training steps; default: the recipe's.
        overwrite: also delete the contents of a non-empty data_dir or out_dir that the demo did not make.
        tokenizer_path: the demo's SentencePiece tokenizer, or assets/tokenizer-bpe (a tokenizer.json of
            the same size); any tokenizer of at most 4,096 ids fits the demo model.
    """
    data_dir, out_dir = (REPO / data_dir).resolve(), (REPO / out_dir).resolve()
    tokenizer_path = (REPO / tokenizer_path).resolve()
    for directory in (data_dir, out_dir):
        claim(directory, overwrite)
    started = time.perf_counter()
    sample = data_dir / "sample"
    step("1/6 sample corpus", "scripts/make_sample_corpus.py", "--destination", str(sample))
    common = ["--tokenizer_path", str(tokenizer_path), "--chunk_size", CHUNK, "--block_size", "256"]
    for split in ("train", "validation"):
        step(
            f"2/6 tokenize SlimPajama sample ({split})",
            "scripts/prepare_slimpajama.py",
            *common,
            "--split",
            split,
            "--source_path",
            str(sample / "SlimPajama-627B"),
            "--destination_path",
            str(data_dir / "slimpajama" / split),
        )
    step(
        "3/6 tokenize StarCoder sample",
        "scripts/prepare_starcoder.py",
        *common,
        "--source_path",
        str(sample / "starcoderdata"),
        "--destination_path",
        str(data_dir / "starcoder" / "train"),
    )
    train_data = (
        f"[{{name: slimpajama, path: {data_dir / 'slimpajama' / 'train'}, weight: 0.693584}}, "
        f"{{name: starcoder, path: {data_dir / 'starcoder' / 'train'}, weight: 0.306416}}]"
    )
    steps = ["--max_steps", str(max_steps)] if max_steps else []
    step(
        "4/6 pretrain tiny_LLaMA_5M",
        "pretrain/tinyllama.py",
        "--config",
        "pretrain/configs/cpu_demo.yaml",
        "--train_data",
        train_data,
        "--val_data",
        str(data_dir / "slimpajama" / "validation"),
        "--out_dir",
        str(out_dir),
        "--resume",
        "false",
        "--tokenizer_path",
        str(tokenizer_path),
        *steps,
    )
    step("5/6 plot the losses", "scripts/plot_metrics.py", "--metrics_path", str(out_dir / "metrics.csv"))
    last = sorted(out_dir.glob("step-*"))[-1]
    step(
        "6/6 convert to Hugging Face",
        "scripts/convert_lit_checkpoint.py",
        "--checkpoint_dir",
        str(last),
        "--output_dir",
        str(out_dir / "hf"),
    )

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out_dir / "hf")
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "hf")
    prompt = "The Python interpreter"
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=40, do_sample=True, top_k=40, temperature=0.8)
    print("\n=== sample from the converted model, loaded with transformers")
    print(tokenizer.decode(output[0], skip_special_tokens=True))
    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s. Artifacts:")
    print(f"  sample corpus       {sample}")
    print(f"  shards              {data_dir / 'slimpajama'}, {data_dir / 'starcoder'}")
    print(f"  checkpoints, log    {out_dir} (metrics.csv, step-*/)")
    print(f"  loss plot           {out_dir / 'loss.png'}")
    print(f"  Hugging Face model  {out_dir / 'hf'}")


if __name__ == "__main__":
    run(demo)
