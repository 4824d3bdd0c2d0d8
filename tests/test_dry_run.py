"""``--dry_run true``: the plan of a run, from every shipped recipe, with the numbers a real run then logs."""

import csv
import re
import subprocess
import sys

import lightning
import pytest
import torch

from lit_gpt.cli import load_script

from conftest import REPO_ROOT, metrics, train_args

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"
RECIPES = sorted((REPO_ROOT / "pretrain" / "configs").glob("*.yaml"))
STAGE = re.compile(
    r"stage (?P<name>\w+): steps (?P<first>[\d,]+)-(?P<last>[\d,]+) \((?P<count>[\d,]+)\), (?P<tokens>[\d,]+) tokens; "
    r"[\d,]+ x \d+ = (?P<per_step>[\d,]+) tokens per step = (?P<world>\d+) processes x (?P<micro>\d+) x "
    r"(?P<accumulation>\d+) accumulation"
)


def number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_shipped_recipe_prints_its_plan_and_starts_nothing(recipe, tmp_path, monkeypatch, capsys):
    def started(*args, **kwargs):
        raise AssertionError("a dry run started something")

    monkeypatch.setattr(torch.distributed, "init_process_group", started)
    monkeypatch.setattr(lightning.Fabric, "launch", started)
    monkeypatch.chdir(tmp_path)  # the recipes' relative folders: no data here, and out_dir must stay absent
    monkeypatch.setattr(sys, "argv", ["tinyllama.py", "--config", str(recipe), "--dry_run", "true"])
    script = load_script(SCRIPT)
    script.run_command(script.RunConfig, then=script.setup)  # an error would exit with status 2
    printed = capsys.readouterr().out
    stages = [match.groupdict() for match in STAGE.finditer(printed)]
    assert stages and "Learning rate" in printed and "Checkpoints every" in printed, printed
    for stage in stages:  # the batch splits as said, and steps x tokens per step is the stage's tokens
        assert number(stage["per_step"]) * number(stage["count"]) == number(stage["tokens"])
        assert number(stage["first"]) + number(stage["count"]) - 1 == number(stage["last"])
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_the_plan_has_the_steps_and_tokens_that_the_run_then_logs(data, tmp_path):
    stages = "[{name: one, tokens: 768}, {name: two, tokens: 1024, global_batch_size: 16}]"
    args = train_args(data, tmp_path / "out", "--stages", stages, "--save_interval", "2", "--keep_checkpoints", "5")
    plan = subprocess.run([sys.executable, str(SCRIPT), *args, "--dry_run", "true"], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert not (tmp_path / "out").exists()
    trained = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-3000:]
    with open(tmp_path / "out" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["train_loss"]]
    tokens = {int(row["step"]): int(row["tokens"]) for row in rows}
    for stage in (match.groupdict() for match in STAGE.finditer(plan.stdout)):
        steps = [int(row["step"]) - 1 for row in rows if row["stage"] == stage["name"]]  # a row follows its step
        assert steps == list(range(number(stage["first"]), number(stage["last"]) + 1)), (stage, steps)
        assert {tokens[s + 1] - tokens.get(s, 0) for s in steps} == {number(stage["per_step"])}
        assert number(stage["world"]) * number(stage["micro"]) * number(stage["accumulation"]) * 32 == number(
            stage["per_step"]
        )
    logged = re.search(r"; ([\d,]+) steps, ([\d,]+) tokens over", trained.stdout).groups()
    assert f"Training: {logged[0]} steps, {logged[1]} tokens" in plan.stdout
    checkpoints = sorted((tmp_path / "out").glob("step-*"))
    assert [p.name for p in checkpoints] == ["step-00000002", "step-00000004", "step-00000005"]
    each = float(re.search(r": ([\d.e+-]+) GB each", plan.stdout).group(1)) * 1e9
    tensors = sum(p.stat().st_size for p in checkpoints[-1].rglob("*.distcp"))
    assert each == pytest.approx(tensors, rel=0.05)  # the model's parameters and AdamW's two moments, fp32
    assert sorted(metrics(tmp_path / "out", "train_loss")) == [1, 2, 3, 4, 5]
