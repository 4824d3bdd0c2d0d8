from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = REPO_ROOT / "assets" / "tokenizer" / "tokenizer.model"

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture(autouse=True)
def seed() -> None:
    """Every test draws the same random numbers on every run."""
    torch.manual_seed(0)
