"""The training benchmark's ceiling covers exactly the model's matrix multiplies."""

from collections import Counter

import pytest
import torch

from lit_gpt import GPT, Config

from conftest import load_script

benchmark_train = load_script("scripts/benchmark_train.py")


def test_the_ceiling_times_every_linear_layer_of_the_model_once():
    """Against the model itself: its nn.Linear modules, as (in, out) features, with their multiplicity."""
    config = Config.from_name("tiny_LLaMA_1b", **benchmark_train.CPU_COMPARISON, vocab_size=1000, block_size=32)
    model = GPT(config)
    expected = Counter((m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert Counter(benchmark_train.linear_shapes(config)) == expected


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("aten::addmm_", "matmuls"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", "matmuls"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
        ("flash_fwd_kernel", "attention"),
        ("aten::exp_", "rest"),
        ("aten::_fused_adamw_", "rest"),
    ],
)
def test_the_profile_sorts_operations_by_name(name, kind):
    assert benchmark_train.operation_kind(name) == kind
