import pytest
import torch

from lit_gpt import GPT, Config
from lit_gpt.config import NAMED_CONFIGS


def llama_parameter_count(c: Config) -> int:
    """Parameters of a Llama model from its shape, written out independently of the model code."""
    head_size = c.n_embd // c.n_head
    attention = c.n_embd * (c.n_head + 2 * c.n_query_groups) * head_size + c.n_head * head_size * c.n_embd
    mlp = 3 * c.n_embd * c.intermediate_size
    norms = 2 * c.n_embd
    embeddings = (1 if c.tie_embeddings else 2) * c.padded_vocab_size * c.n_embd  # input embedding, output head
    return embeddings + c.n_layer * (attention + mlp + norms) + c.n_embd


def test_tiny_llama_1b_matches_the_paper():
    config = Config.from_name("tiny_LLaMA_1b")
    assert (config.n_layer, config.n_head, config.n_query_groups) == (22, 32, 4)
    assert (config.n_embd, config.intermediate_size, config.block_size) == (2048, 5632, 2048)
    assert (config.vocab_size, config.padded_vocab_size, config.norm_eps, config.bias) == (32000, 32000, 1e-5, False)
    with torch.device("meta"):
        model = GPT(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == llama_parameter_count(config) == 1_100_048_384


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_every_named_config_builds_with_the_formula_count(name):
    config = Config.from_name(name)
    with torch.device("meta"):
        model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == llama_parameter_count(config)


def test_demo_config_is_a_few_million_parameters():
    assert 1e6 < llama_parameter_count(Config.from_name("tiny_LLaMA_5M")) < 1e7


def test_from_name_applies_overrides_and_derives_fields():
    config = Config.from_name("tiny_LLaMA_1b", n_layer=2, vocab_size=32001)
    assert config.n_layer == 2
    assert config.padded_vocab_size == 32064  # rounded up to a multiple of 64
    assert config.head_size == 64
    assert Config(n_head=8, n_embd=64).n_query_groups == 8  # multi-head attention by default


def test_replace_rederives_the_padded_vocabulary():
    config = Config.from_name("tiny_LLaMA_5M").replace(vocab_size=100)
    assert config.padded_vocab_size == 128


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="tiny_LLaMA_1b") as error:
        Config.from_name("tiny_llama_7b")
    assert "tiny_llama_7b" in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_embd=100, n_head=3), "n_embd \\(100\\) must be divisible by n_head \\(3\\)"),
        (dict(n_head=8, n_query_groups=3, n_embd=64), "n_head \\(8\\) must be divisible by n_query_groups \\(3\\)"),
        (dict(n_embd=24, n_head=8, n_query_groups=8), "head_size .* = 3 must be even"),
        (dict(vocab_size=100, padded_vocab_size=64), "padded_vocab_size \\(64\\) is smaller than vocab_size"),
        (dict(n_layer=0), "n_layer must be positive"),
        (dict(norm_eps=0.0), "norm_eps must be positive"),
    ],
)
def test_invalid_combinations_say_which(overrides, message):
    with pytest.raises(ValueError, match=message):
        Config(**overrides)
