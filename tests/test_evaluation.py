"""The lm-eval adapter against the harness's own Hugging Face backend, on tasks made here (offline)."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")  # the [eval] extra; the [test] extra installs it

from lm_eval.tasks import TaskManager  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from lit_gpt import GPT, Config  # noqa: E402
from lit_gpt.evaluation import GPTEvalModel  # noqa: E402
from lit_gpt.weights import load_model  # noqa: E402

from conftest import (  # noqa: E402
    DEMO_BPE_TOKENIZER,
    DEMO_TOKENIZER,
    REPO_ROOT,
    TINY_OVERRIDES,
    assert_refused,
    free_port,
    load_script,
    train_args,
)

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"


def write_tasks(directory: Path) -> None:
    load_script("scripts/make_sample_tasks.py").make_sample_tasks(directory)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, request) -> tuple[Path, Path, Path]:
    """A random model as a lit checkpoint and converted to Hugging Face, and the task folder; with the
    demo's SentencePiece model or its byte-level BPE tokenizer.json."""
    root = tmp_path_factory.mktemp("evaluation")
    config = Config.from_name("tiny_LLaMA_5M", **(TINY_OVERRIDES | {"block_size": 64}))
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():  # larger weights than the initialisation: log-likelihoods that differ by choice
        for p in model.parameters():
            p.mul_(8 if p.dim() > 1 else 1)
    lit = root / "lit"
    lit.mkdir()
    save_file(model.state_dict(), lit / "model.safetensors")
    (lit / "model_config.json").write_text(json.dumps(config.to_dict()))
    backend = getattr(request, "param", "sentencepiece")
    for path in [DEMO_TOKENIZER] if backend == "sentencepiece" else DEMO_BPE_TOKENIZER.iterdir():
        shutil.copy(path, lit)
    load_script("scripts/convert_lit_checkpoint.py").convert_lit_checkpoint(lit, root / "hf")
    tasks = root / "tasks"
    tasks.mkdir()
    write_tasks(tasks)
    return lit, root / "hf", tasks


def evaluate(model, tasks: Path, names: list[str], **kwargs):
    return lm_eval.simple_evaluate(
        model=model,
        tasks=names,
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
        **kwargs,
    )


@pytest.mark.parametrize("model_dirs", ["sentencepiece", "tokenizer.json"], indirect=True)
def test_adapter_scores_like_the_harness_hugging_face_backend(model_dirs):
    lit, hf, tasks = model_dirs
    model, tokenizer = load_model(lit)
    few_shot = (tasks / "sample_choice.yaml").read_text().replace("task: sample_choice", "task: sample_choice_3shot")
    (tasks / "sample_choice_3shot.yaml").write_text(few_shot + "num_fewshot: 3\n")  # examples from its test split
    names = ["sample_choice", "sample_choice_3shot", "sample_text", "sample_generate"]
    ours = evaluate(GPTEvalModel(model, tokenizer, model.config.block_size, batch_size=4), tasks, names)
    # Our texts start with BOS, as in training. The hf backend's add_bos_token=True does that for scored
    # contexts, but its rolling windows then hold BOS twice (the prefix token, and the text's own): for
    # whole texts the backend's default, BOS as the prefix token only, is what we do.
    theirs = {"samples": {}, "results": {}}
    for task, bos in (
        ("sample_choice", True),
        ("sample_choice_3shot", True),
        ("sample_text", False),
        ("sample_generate", True),
    ):
        args = f"pretrained={hf},dtype=float32,add_bos_token={bos}"
        result = evaluate("hf", tasks, [task], model_args=args, batch_size=4, device="cpu")
        theirs["samples"][task], theirs["results"][task] = result["samples"][task], result["results"][task]

    assert all(sample["arguments"][0][0].count("?") == 4 for sample in ours["samples"]["sample_choice_3shot"])
    for task in ("sample_choice", "sample_choice_3shot", "sample_text"):  # (log-likelihood, greedy) per choice or text
        mine = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
        reference = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
        assert len(mine) == len(reference) == (6 if task == "sample_text" else 16)
        for a, b in zip(mine, reference, strict=True):
            for (ll_a, *greedy_a), (ll_b, *greedy_b) in zip(
                [r if isinstance(r, (list, tuple)) else [r] for r in a["filtered_resps"]],
                [r if isinstance(r, (list, tuple)) else [r] for r in b["filtered_resps"]],
                strict=True,
            ):
                assert abs(float(ll_a) - float(ll_b)) <= 1e-4, (task, a["doc_id"], ll_a, ll_b)
                assert greedy_a == greedy_b

    # A random model emits stray byte tokens; SentencePiece and Hugging Face's byte-fallback decoder turn
    # invalid UTF-8 into different replacement characters, so the printable text is compared.
    def printable(samples: list[dict]) -> list[str]:
        responses = [s["filtered_resps"] for s in sorted(samples, key=lambda s: s["doc_id"])]
        texts = [r[0] if isinstance(r, list) else r for r in responses]
        return ["".join(c for c in text if c.isprintable() and c != "\ufffd") for text in texts]

    generated = printable(ours["samples"]["sample_generate"])
    assert generated == printable(theirs["samples"]["sample_generate"]) and len(generated) == 16  # greedy, KV cache
    assert len(set(generated)) > 8  # different texts: the comparison means something
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["sample_choice"][metric] == theirs["results"]["sample_choice"][metric]
    accuracy = ours["results"]["sample_choice"]["acc,none"]
    assert 0 < accuracy < 1  # a random model: some right, some wrong, so the comparison means something
    for metric in ("word_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["sample_text"][metric] == pytest.approx(
            theirs["results"]["sample_text"][metric], rel=1e-5
        )


def run_script(launcher: list[str], script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*launcher, str(REPO_ROOT / script), *args], capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-5000:])
    return result


def logged(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_benchmarks_during_training_match_one_process_and_the_script(data, tmp_path):
    """Benchmarks on the model sharded over 2 processes score what 1 process scores, leave the training
    losses bitwise unchanged, and agree with scripts/evaluate.py on the final checkpoint, before and after
    conversion to Hugging Face."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_tasks(tasks)
    benchmarks = [
        "--eval_tasks",
        "[sample_choice]",
        "--eval_tasks_include_path",
        str(tasks),
        "--eval_tasks_limit",
        "10",
    ]
    common = ["--max_steps", "4", "--eval_tasks_interval", "2", "--eval_interval", "100"]
    port = ["--master_port", str(free_port())]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *port]
    runs = {
        "plain": ([sys.executable], []),
        "one": ([sys.executable], benchmarks),
        "two": (torchrun, [*benchmarks, "--devices", "2"]),
    }
    for name, (launcher, extra) in runs.items():
        run_script(launcher, "pretrain/tinyllama.py", *train_args(data, tmp_path / name, *common, *extra))
    rows = {name: logged(tmp_path / name) for name in runs}
    losses = {name: [r["train_loss"] for r in table if r["train_loss"]] for name, table in rows.items()}
    assert len(losses["plain"]) == 4 and losses["one"] == losses["plain"] == losses["two"]
    scores = {
        name: {
            int(r["step"]): (r["eval/sample_choice/acc"], r["eval/sample_choice/acc_norm"])
            for r in table
            if r.get("eval/sample_choice/acc")
        }
        for name, table in rows.items()
        if name != "plain"
    }
    assert sorted(scores["one"]) == [2, 4] and scores["one"] == scores["two"]

    checkpoint = tmp_path / "two" / "step-00000004"
    run_script(
        [sys.executable],
        "scripts/convert_lit_checkpoint.py",
        "--checkpoint_dir",
        str(checkpoint),
        "--output_dir",
        str(tmp_path / "hf"),
    )
    for directory in (checkpoint, tmp_path / "hf"):
        output = tmp_path / f"{directory.name}.json"
        args = ["--checkpoint_dir", str(directory), "--tasks", "[sample_choice]", "--include_path", str(tasks)]
        result = run_script(
            [sys.executable], "scripts/evaluate.py", *args, "--limit", "10", "--output_path", str(output)
        )
        printed = result.stdout + result.stderr  # the harness's notices and the split-building bars, silenced
        assert "aggregation is not" not in printed and "higher_is_better is not" not in printed
        assert "Generating test split" not in printed
        result = json.loads(output.read_text())["sample_choice"]
        assert (str(result["acc,none"]), str(result["acc_norm,none"])) == scores["two"][4], directory


def test_bad_evaluation_input_is_one_clear_message(model_dirs, data, tmp_path):
    lit, _, tasks = model_dirs
    for args, message in (
        (
            ["--checkpoint_dir", str(lit), "--tasks", "[no_such_task]", "--include_path", str(tasks)],
            "Unknown task(s) no_such_task",
        ),
        (
            ["--checkpoint_dir", str(lit), "--tasks", "[sample_choise]", "--include_path", str(tasks)],
            "Unknown task(s) sample_choise (sample_choise: did you mean sample_choice?)",
        ),
        (
            ["--checkpoint_dir", str(lit), "--tasks", "[sample_choice]", "--include_path", str(tmp_path / "nope")],
            "is not a folder",
        ),
        (
            ["--checkpoint_dir", str(tmp_path), "--tasks", "[sample_choice]", "--include_path", str(tasks)],
            "not a lit or training checkpoint",
        ),
    ):
        assert_refused(run_script([sys.executable], "scripts/evaluate.py", *args, check=False), message)
    args = train_args(
        data,
        tmp_path / "out",
        "--max_steps",
        "1",
        "--eval_tasks",
        "[no_such_task]",
        "--eval_tasks_include_path",
        str(tasks),
    )
    assert_refused(
        run_script([sys.executable], "pretrain/tinyllama.py", *args, check=False), "Unknown task(s) no_such_task"
    )


def test_each_validation_set_gets_its_loss_and_the_weighted_mean(data, tmp_path):
    common = ["--max_steps", "2", "--eval_interval", "2", "--eval_blocks", "1000"]
    both = f"[{{name: a, path: {data / 'a'}}}, {{name: b, path: {data / 'b'}, weight: 3}}]"
    run_script(
        [sys.executable], "pretrain/tinyllama.py", *train_args(data, tmp_path / "both", *common, "--val_data", both)
    )
    row = next(r for r in logged(tmp_path / "both") if r["val_loss"])
    for name in ("a", "b"):
        run_script(
            [sys.executable],
            "pretrain/tinyllama.py",
            *train_args(data, tmp_path / name, *common, "--val_data", str(data / name)),
        )
        alone = next(r for r in logged(tmp_path / name) if r["val_loss"])
        assert row[f"val/{name}/loss"] == alone["val_loss"]
    expected = (float(row["val/a/loss"]) + 3 * float(row["val/b/loss"])) / 4
    assert float(row["val_loss"]) == pytest.approx(expected, rel=1e-12)
    assert float(row["val/a/ppl"]) == pytest.approx(math.exp(float(row["val/a/loss"])))


def test_hub_tasks_without_the_hub_are_one_line_at_once(model_dirs, tmp_path):
    """The hub unreachable (HF_ENDPOINT at a port nobody listens on), nothing cached: one line naming
    --include_path, after one quick attempt rather than the retries of the hub library."""
    lit, _, _ = model_dirs
    environment = os.environ | {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf")}
    environment = {
        key: value for key, value in environment.items() if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    command = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--checkpoint_dir", str(lit)]
    result = subprocess.run(
        [*command, "--tasks", "[piqa]"], capture_output=True, text=True, env=environment, timeout=600
    )
    assert_refused(
        result, "The data of task(s) piqa come from the Hugging Face hub, which cannot be reached", "--include_path"
    )
    assert "Retrying in" not in result.stderr
