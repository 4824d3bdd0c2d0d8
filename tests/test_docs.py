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
    """The commands of the text's runnable bash blocks: comments dropped, continued lines joined."""
    found = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)\n```", text, re.DOTALL):
        if match["before"].startswith(NOT_RUN):
            continue
        lines = [re.sub(r"\s+#\s.*$", "", line) for line in match["body"].splitlines()]
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
