"""A task that runs the model's code (HumanEval's format, two tiny problems): our adapter generates what the
harness's own hf backend generates and gets the same pass@1; scripts/evaluate.py runs it only when asked."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lit_gpt import GPT, Config
from lit_gpt.cli import load_script
from lit_gpt.weights import load_model

from conftest import DEMO_TOKENIZER, REPO_ROOT, TINY_OVERRIDES, assert_refused

lm_eval = pytest.importorskip("lm_eval")  # the [eval] extra; the [test] extra installs it

from lm_eval.tasks import TaskManager  # noqa: E402

from lit_gpt.evaluation import GPTEvalModel  # noqa: E402

# Two problems as HumanEval writes them (prompt, test, entry point). The first is solved whatever the model
# writes: its prompt ends inside a comment and generation stops at the line's end. The second needs the
# expression after `return`, which a random model does not write.
PROBLEMS = [
    {"prompt": "def add(a, b):\n    return a + b\n#", "test": "assert add(2, 3) == 5", "entry_point": "add"},
    {"prompt": "def mul(a, b):\n    return", "test": "assert mul(2, 3) == 6", "entry_point": "mul"},
]
METRIC = '''import subprocess
import sys


def build_predictions(resps, docs):
    """The program of each response: the prompt and what the model wrote after it (as HumanEval's)."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def pass_at_1(references, predictions, **kwargs):
    """The share of programs whose test passes, each run in a fresh interpreter."""
    passed = []
    for test, programs in zip(references, predictions):
        program = programs[0] + "\\n" + test + "\\n"
        run = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
        passed.append(run.returncode == 0)
    return sum(passed) / len(passed)
'''
TASK = """task: sample_code
dataset_path: json
test_split: test
dataset_kwargs:
  data_files:
    test: {data}
unsafe_code: true
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{test}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
filter_list:
  - name: create_test
    filter:
      - function: custom
        filter_fn: !function sample_code_metric.build_predictions
metric_list:
  - metric: !function sample_code_metric.pass_at_1
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def code_task(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A random model (lit checkpoint, and converted to Hugging Face) and the task folder."""
    root = tmp_path_factory.mktemp("code")
    config = Config.from_name("tiny_LLaMA_5M", **(TINY_OVERRIDES | {"block_size": 64}))
    torch.manual_seed(0)
    lit = root / "lit"
    lit.mkdir()
    save_file(GPT(config).state_dict(), lit / "model.safetensors")
    (lit / "model_config.json").write_text(json.dumps(config.to_dict()))
    shutil.copy(DEMO_TOKENIZER, lit)
    load_script(REPO_ROOT / "scripts" / "convert_lit_checkpoint.py").convert_lit_checkpoint(lit, root / "hf")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "sample_code.jsonl").write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    (tasks / "sample_code_metric.py").write_text(METRIC)
    (tasks / "sample_code.yaml").write_text(TASK.format(data=tasks / "sample_code.jsonl"))
    return lit, root / "hf", tasks


def run_task(model, tasks: Path, **kwargs) -> dict:
    manager = TaskManager(include_path=str(tasks))
    return lm_eval.simple_evaluate(
        model=model,
        tasks=["sample_code"],
        task_manager=manager,
        log_samples=True,
        confirm_run_unsafe_code=True,
        **kwargs,
    )


def test_our_adapter_writes_and_passes_what_the_hf_backend_does(code_task):
    lit, hf, tasks = code_task
    model, tokenizer = load_model(lit)
    ours = run_task(GPTEvalModel(model, tokenizer, model.config.block_size, batch_size=2), tasks)
    theirs = run_task("hf", tasks, model_args=f"pretrained={hf},dtype=float32,add_bos_token=True", device="cpu")

    def programs(result: dict) -> list[str]:  # printable: the two decoders replace invalid UTF-8 differently
        samples = sorted(result["samples"]["sample_code"], key=lambda sample: sample["doc_id"])
        texts = [s["filtered_resps"][0][0] for s in samples]  # one program per problem (pass@1)
        return ["".join(c for c in text if c.isprintable() or c == "\n") for text in texts]

    assert programs(ours) == programs(theirs)
    assert all(program.startswith(problem["prompt"]) for program, problem in zip(programs(ours), PROBLEMS, strict=True))
    assert all(len(program) > len(problem["prompt"]) for program, problem in zip(programs(ours), PROBLEMS, strict=True))
    assert ours["results"]["sample_code"]["pass_at_1,create_test"] == 0.5  # one solved, one not
    assert theirs["results"]["sample_code"]["pass_at_1,create_test"] == 0.5


def test_the_script_runs_code_only_when_allowed(code_task, tmp_path):
    lit, _, tasks = code_task
    command = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--checkpoint_dir", str(lit)]
    command += ["--tasks", "[sample_code]", "--include_path", str(tasks), "--output_path", str(tmp_path / "r.json")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert_refused(refused, "sample_code runs the code the model writes: --allow_code_execution true includes it")
    assert not (tmp_path / "r.json").exists()
    allowed = subprocess.run([*command, "--allow_code_execution", "true"], capture_output=True, text=True, timeout=600)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert json.loads((tmp_path / "r.json").read_text())["sample_code"]["pass_at_1,create_test"] == 0.5
