"""Write two small benchmark tasks in the evaluation harness's own format, for machines without internet.

    python scripts/make_sample_tasks.py --output_dir data/sample_tasks
    python scripts/evaluate.py --checkpoint_dir out/demo/step-00000200 \\
        --tasks '[sample_choice, sample_text]' --include_path data/sample_tasks

``sample_choice`` is multiple choice (acc, acc_norm), ``sample_text`` scores whole texts (word
perplexity, bits per byte), ``sample_generate`` asks for a few generated words (exact match); all are
random sentences over a small vocabulary, made from ``--seed``, so
they measure nothing about language: they exercise the evaluation path (tests, benchmarks, the demo)
exactly as a real task would, offline. Each task is a YAML file next to its JSON-lines data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lit_gpt.cli import run

WORDS = "the cat sat on a mat while dogs ran over green hills and birds sang songs of old rivers".split()


def make_sample_tasks(output_dir: Path, choice_docs: int = 16, text_docs: int = 6, seed: int = 0) -> None:
    """Write sample_choice.yaml, sample_text.yaml, sample_generate.yaml and their data into ``output_dir``.

    Args:
        output_dir: the folder to give evaluate.py as --include_path (created if missing).
        choice_docs: questions in sample_choice (three choices each) and in sample_generate.
        text_docs: texts in sample_text, 10 to 120 words each.
        seed: makes the texts.
    """
    rng = random.Random(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))

    choices = [
        {"question": words(3, 12) + "?", "choices": [words(1, 5) for _ in range(3)], "answer": rng.randrange(3)}
        for _ in range(choice_docs)
    ]
    texts = [{"text": words(10, 120)} for _ in range(text_docs)]
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, docs in (("choice", choices), ("text", texts)):
        (output_dir / f"sample_{name}.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    data = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: {}\n"
    (output_dir / "sample_choice.yaml").write_text(
        "task: sample_choice\n"
        + data.format(output_dir.resolve() / "sample_choice.jsonl")
        + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (output_dir / "sample_text.yaml").write_text(
        "task: sample_text\n"
        + data.format(output_dir.resolve() / "sample_text.jsonl")
        + "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (output_dir / "sample_generate.yaml").write_text(
        "task: sample_generate\n"
        + data.format(output_dir.resolve() / "sample_choice.jsonl")
        + "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{choices[answer]}}'\n"
        "generation_kwargs:\n  until: ['?', '.']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    print(
        f"Wrote sample_choice and sample_generate ({choice_docs} questions each) and sample_text ({text_docs} "
        f"texts) to {output_dir}"
    )


if __name__ == "__main__":
    run(make_sample_tasks)
