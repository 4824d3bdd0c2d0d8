"""flash-attn and xformers are optional: absent or broken, nothing may need them."""

import os
import subprocess
import sys
import textwrap

from lit_gpt import kernels

from conftest import REPO_ROOT

PROGRAM = textwrap.dedent(
    """
    import sys
    sys.modules["flash_attn"] = None  # makes "import flash_attn" raise ImportError
    sys.modules["xformers"] = None
    import torch
    import lit_gpt
    from lit_gpt import GPT, Config, kernels
    model = GPT(Config.from_name("tiny_LLaMA_5M", n_layer=2))
    idx = torch.randint(0, 4096, (2, 33))
    loss = model(idx[:, :-1], targets=idx[:, 1:]).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert "flash_attn" not in [m for m in sys.modules if sys.modules[m] is not None]
    print("ok", kernels.describe("cpu")["attention"])
    """
)


def test_import_and_training_step_without_flash_attn_or_xformers():
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok scaled_dot_product_attention"


def test_a_broken_gpu_extension_counts_as_absent(tmp_path, monkeypatch):
    broken = tmp_path / "broken_gpu_extension"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise OSError('libcudart.so.12: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert kernels._optional_module("broken_gpu_extension") is None
    assert kernels._optional_module("math") is not None


def test_the_gpu_check_explains_itself_and_stops_at_once_without_cuda(tmp_path):
    script = str(REPO_ROOT / "scripts" / "gpu_check.sh")
    shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--only" in shown.stdout and "llama3" in shown.stdout
    environment = {**os.environ, "OUT": str(tmp_path / "out")}
    for args, message in [
        ([], "no usable CUDA device"),
        (["--only", "kernels,typo"], "unknown step typo"),
        (["--steps"], "unknown argument --steps"),
    ]:
        result = subprocess.run(["bash", script, *args], capture_output=True, text=True, env=environment)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result
    assert not (tmp_path / "out").exists()  # nothing started
