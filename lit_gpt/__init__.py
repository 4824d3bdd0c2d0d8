"""TinyLlama pretraining library: the model, its config, the tokenizer, data, schedules and checkpoints.

``GPT``, ``Config`` and ``Tokenizer`` are imported on first use, so that data preparation, which
needs neither torch nor the model, starts without loading them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_gpt.config import Config
    from lit_gpt.model import GPT
    from lit_gpt.tokenizer import Tokenizer

__all__ = ["GPT", "Config", "Tokenizer"]
_HOMES = {"GPT": "lit_gpt.model", "Config": "lit_gpt.config", "Tokenizer": "lit_gpt.tokenizer"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lit_gpt' has no attribute {name!r}")
