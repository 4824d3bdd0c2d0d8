"""The README's Data and Training commands run as written, in the order written, so the docs cannot drift.

Every ```bash block of those sections runs in a fresh folder that holds the repository's code and assets
(what a clone has), except a block marked ``<!-- docs test: not run (why) -->`` (GPUs, real corpora).
Training commands get a tiny step count through documented options; everything else runs as written.
"""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

NOT_RUN = "<!-- docs test: not run ("
TINY_RUN = ["--max_steps", "2", "--eval_interval", "2", "--eval_blocks", "16", "--log_interval", "1"]


def section(markdown: str, title: str) -> str:
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else None]


def commands(text: str) -> list[str]:
    """The commands of the text's runnable bash blocks: comments (whole lines or after a command) dropped,
    continued lines joined."""
    found = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)\n```", text, re.DOTALL):
        if match["before"].startswith(NOT_RUN):
            continue
        lines = [re.sub(r"(^|\s+)#\s.*$", "", line) for line in match["body"].splitlines()]
        found += [command.strip() for command in "\n".join(lines).replace("\\\n", " ").splitlines() if command.strip()]
    return found


def run_in_own_group(words: list[str], cwd: Path, environment: dict) -> tuple[str, str, int]:
    """Run a command in a process group of its own, which is killed by its id afterwards: torchrun's
    workers do not outlive a failed or timed-out command."""
    process = subprocess.Popen(
        words,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=environment,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return stdout, stderr, process.returncode


def test_the_readme_data_and_training_commands_run_as_written(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    documented = commands(section(readme, "Data")) + commands(section(readme, "Training"))
    skipped = [line for line in readme.splitlines() if line.startswith("<!-- docs test")]
    assert all(line.startswith(NOT_RUN) and line.endswith(") -->") for line in skipped), skipped
    assert any("prepare_starcoder.py" in c for c in documented) and any("torchrun" in c for c in documented)
    for name in ("scripts", "pretrain", "assets", "lit_gpt"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    environment = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in documented:
        words = shlex.split(command)
        if "pretrain/tinyllama.py" in words and "--help" not in words:
            words += TINY_RUN
        stdout, stderr, status = run_in_own_group(words, tmp_path, environment)
        assert status == 0, (command, stdout[-2000:], stderr[-3000:])
        assert "srun` command is available" not in stderr  # Lightning's hint, meaningless outside SLURM
        for value in (words[i + 1] for i, word in enumerate(words[:-1]) if word in ("--destination_path", "--out_dir")):
            assert any((tmp_path / value).iterdir()), f"{command} made nothing in {value}"
    for out_dir in ("out/cpu", "out/cpu-2"):  # the recipe's folders and the torchrun example's
        assert (tmp_path / out_dir / "step-00000002").is_dir(), out_dir


def subsection(markdown: str, title: str) -> str:
    start = markdown.index(f"\n### {title}\n")
    return markdown[start : re.search(r"\n##+ ", markdown[start + 1 :]).start() + start + 1]


def recipe_commands() -> list[str]:
    """The prepare commands in the comments of the shipped recipes (``#   python scripts/...``)."""
    found = []
    for recipe in sorted((REPO_ROOT / "pretrain" / "configs").glob("*.yaml")):
        comments = "\n".join(line[1:].strip() for line in recipe.read_text().splitlines() if line.startswith("#"))
        found += [line for line in comments.replace("\\\n", " ").splitlines() if line.startswith("python scripts/prep")]
    return found


def test_pretrain_md_and_recipe_prepare_commands_run_on_the_sample_layouts(tmp_path):
    """PRETRAIN.md's commands for other corpora, and those in the recipes' comments, read the real
    layouts; the sample corpus has the same folders under data/sample, with the demo tokenizer."""
    documented = commands(subsection((REPO_ROOT / "PRETRAIN.md").read_text(), "Any other corpus"))
    documented += recipe_commands()
    assert len(documented) >= 7 and any("tiny_llama_v1.1_chinese" in c or "skypile" in c for c in documented)
    for name in ("scripts", "assets", "lit_gpt"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    script = REPO_ROOT / "scripts" / "make_sample_corpus.py"
    subprocess.run([sys.executable, str(script), "--destination", str(tmp_path / "data" / "sample")], check=True)
    for command in documented:
        words = shlex.split(command)
        source = words.index("--source_path") + 1
        words[source] = words[source].replace("data/", "data/sample/", 1)
        words[0] = sys.executable
        stdout, stderr, status = run_in_own_group(
            [*words, "--tokenizer_path", "assets/tokenizer"], tmp_path, os.environ
        )
        assert status == 0, (command, stdout[-2000:], stderr[-3000:])
        options = dict(zip(words[2::2], words[3::2], strict=True))
        destination = options.get("--destination_path") or f"data/{options['--source']}/train"
        assert list((tmp_path / destination).glob("*.bin")), f"{command} made no shards in {destination}"


# The sections whose bash blocks the tests above run, per file; every other block says why it is not run.
RUN_SECTIONS = {"README.md": {"Data", "Training"}, "PRETRAIN.md": {"Any other corpus"}}


def test_every_command_block_runs_in_a_test_or_says_why_not():
    for name in ("README.md", "PRETRAIN.md", "REFERENCE.md", "BENCHMARKS.md"):
        markdown = (REPO_ROOT / name).read_text()
        for block in re.finditer(r"(?P<before>[^\n]*)\n```bash\n", markdown):
            headings = re.findall(r"^#{2,3} (.+)$", markdown[: block.start()], re.MULTILINE)
            where = f"{name}, {headings[-1] if headings else 'top'}"
            if block["before"].startswith("<!-- docs test"):
                assert block["before"].startswith(NOT_RUN) and block["before"].endswith(") -->"), where
            else:
                assert headings and headings[-1] in RUN_SECTIONS.get(name, set()), f"{where}: not run, nor says why"
