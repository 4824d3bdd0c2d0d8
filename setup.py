from pathlib import Path

from setuptools import find_packages, setup

root = Path(__file__).parent

setup(
    name="lit-gpt-tinyllama",
    version="0.1.0",
    description="Pretrain small Llama-architecture language models from scratch: the TinyLlama recipe",
    long_description=(root / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lit_gpt", "lit_gpt.*"]),
    package_data={"lit_gpt": ["tasks/*.yaml"]},  # the paper's task groups for the evaluation harness
    install_requires=(root / "requirements.txt").read_text().split(),
    extras_require={
        "gpu": ["flash-attn>=2.5", "xformers>=0.0.28"],
        "wandb": ["wandb"],
        "tensorboard": ["tensorboard"],
        "eval": ["lm-eval>=0.4.8"],
        "hf": ["transformers>=4.45", "protobuf"],
        "demo": ["transformers>=4.45", "protobuf", "matplotlib"],
        "test": [
            "pytest>=8",
            "pytest-timeout",
            "transformers>=4.45",
            "protobuf",
            "ruff",
            "matplotlib",
            "tensorboard",
            "wandb",
            "lm-eval[hf]>=0.4.8",  # [hf]: the harness's own backend, which the adapter's tests compare with
            "datasets",  # writes and reads the Arrow folders of the corpus tests (datasets.save_to_disk)
        ],
    },
)
