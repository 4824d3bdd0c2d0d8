"""TinyLlama pretraining library: the model, its config, the tokenizer, data, schedules and checkpoints."""

from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer

__all__ = ["GPT", "Config", "Tokenizer"]
